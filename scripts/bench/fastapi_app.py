"""The comparison point for scripts/bench-coordinator.sh: the guide's mock Coordinator as people
write it with FastAPI, holding everything in memory (no database, no durability).

Only the two endpoints the benchmark measures, with the same checks the Rust Coordinator makes
cheaply: a bearer key looked up in a dict, a validated heartbeat body, the miner_id owned by the
key, and `next` answering 204 with an empty body when nothing is queued. It must never be used
as a real Coordinator: nothing survives a restart and there are no jobs.
Run: uvicorn fastapi_app:app --app-dir scripts/bench (with BENCH_KEY set to the accepted key).
"""

import os
from datetime import datetime, timezone
from typing import Optional, Union

from fastapi import FastAPI, Header, HTTPException, Response
from pydantic import BaseModel

app = FastAPI()
KEYS = {os.environ.get("BENCH_KEY", "bench-key"): "miner"}
MINERS: dict = {}  # miner_id -> (key, wallet, capabilities)
QUEUE: list = []


class Heartbeat(BaseModel):
    miner_id: str
    wallet: str
    mode: str
    gpu: Union[bool, int] = False
    concurrency: Optional[int] = None
    workloads: list = []


def auth(authorization: Optional[str]) -> str:
    if not authorization or not authorization.startswith("Bearer "):
        raise HTTPException(401, "missing key")
    key = authorization[7:]
    if KEYS.get(key) != "miner":
        raise HTTPException(401, "unknown key")
    return key


@app.post("/v1/miner/heartbeat")
async def heartbeat(hb: Heartbeat, authorization: Optional[str] = Header(None)):
    key = auth(authorization)
    owner = MINERS.get(hb.miner_id)
    if owner is not None and owner[0] != key:
        raise HTTPException(403, "miner_id taken")
    MINERS[hb.miner_id] = (key, hb.wallet, hb)
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"miner_id": hb.miner_id, "wallet": hb.wallet, "server_time": now}


@app.get("/v1/miner/next")
async def next_job(miner: str, slots: int = 1, authorization: Optional[str] = Header(None)):
    key = auth(authorization)
    owner = MINERS.get(miner)
    if owner is None:
        raise HTTPException(409, "unknown miner")
    if owner[0] != key:
        raise HTTPException(403, "miner_id taken")
    if not QUEUE:
        return Response(status_code=204)
    return QUEUE.pop(0)
