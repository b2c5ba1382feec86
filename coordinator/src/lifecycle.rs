//! The job state machine, in one pure function: `(job, event) -> (new job state, effects)`.
//!
//! The store loads a job, asks [`step`] what happens, and applies the answer (lease, credit,
//! failure record, wake-up) inside one transaction. Ownership checks on proofs and fail reports
//! ([`check_report`]) live here too, so every decision about a job is testable without SQLite.
//!
//! This module must never do I/O, read the clock or hold state: time comes in as an argument.

use aitbc_protocol::api::{Disposition, ErrorCode, FailReason, JobState};

use crate::error::Refusal;

/// What can happen to a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A miner's `next` takes the (queued) job.
    Assign,
    /// The assigned miner's proof is accepted: its credit is pending until the job settles.
    Proof,
    /// The assigned miner reports a failure.
    Fail(FailReason),
    /// The lease deadline passed without a proof or report.
    LeaseExpired,
    /// The proof holds (its audit passed, or it was not chosen and its holding window ended,
    /// or verification is off): the pending credit settles.
    Settle,
    /// The proof does not hold (`AuditFailed`, `AuditTimeout`), or its miner was caught on
    /// another job: the pending credit is forfeited and the job goes back to the queue.
    Reject(FailReason),
}

/// The part of a job the state machine looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub state: JobState,
    /// Attempts started so far.
    pub attempt: u32,
    pub max_attempts: u32,
}

/// What the lease becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// A new lease starts (deadline = now + max_runtime_s + lease margin), owned by the miner.
    Start,
    /// The lease (and its owner) are cleared.
    Clear,
    /// The lease deadline is cleared; its owner stays recorded as the job's prover.
    Keep,
}

/// The side effects the store applies along with the new state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effects {
    pub lease: Lease,
    /// Record the proof and append one pending ledger credit of the job's reward.
    pub credit: bool,
    /// Settle the pending credit of this attempt (one ledger entry).
    pub settle: bool,
    /// Forfeit the pending credit of this attempt (one ledger entry).
    pub forfeit: bool,
    /// Record this failure (reason) for the client to see.
    pub failure: Option<FailReason>,
    /// The job is queued again: wake waiting long-polls.
    pub wake: bool,
}

impl Effects {
    const NONE: Effects = Effects {
        lease: Lease::Keep,
        credit: false,
        settle: false,
        forfeit: false,
        failure: None,
        wake: false,
    };
}

/// The outcome of a permitted event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub state: JobState,
    pub attempt: u32,
    pub effects: Effects,
}

/// Applies `event` to a job, or says why it is not allowed.
pub fn step(job: Snapshot, event: Event) -> Result<Transition, Refusal> {
    let to = |state, effects| {
        Ok(Transition {
            state,
            attempt: job.attempt,
            effects,
        })
    };
    match (job.state, event) {
        (JobState::Completed | JobState::Failed, _) => Err(Refusal::new(
            ErrorCode::JobFinished,
            format!("the job is already {}", job.state.as_str()),
        )),
        (JobState::Queued, Event::Assign) => {
            let attempt = job.attempt.checked_add(1).ok_or_else(|| {
                Refusal::new(ErrorCode::Internal, "attempt counter overflow".to_string())
            })?;
            Ok(Transition {
                state: JobState::Assigned,
                attempt,
                effects: Effects {
                    lease: Lease::Start,
                    ..Effects::NONE
                },
            })
        }
        (JobState::Queued | JobState::Assigned, Event::Settle | Event::Reject(_)) => {
            Err(Refusal::new(
                ErrorCode::NoAudit,
                "the job has no proof being verified".to_string(),
            ))
        }
        (JobState::Queued, _) => Err(Refusal::new(
            ErrorCode::NotAssigned,
            "the job is not assigned (its lease expired or it was given back and requeued)"
                .to_string(),
        )),
        (JobState::Assigned, Event::Assign) => Err(Refusal::new(
            ErrorCode::NotAssigned,
            "the job is already assigned".to_string(),
        )),
        (JobState::Assigned, Event::Proof) => to(
            JobState::Verifying,
            Effects {
                credit: true,
                ..Effects::NONE
            },
        ),
        (JobState::Assigned, Event::Fail(reason)) => Ok(after_failure(job, reason, false)),
        (JobState::Assigned, Event::LeaseExpired) => {
            Ok(after_failure(job, FailReason::TimedOut, false))
        }
        (JobState::Verifying, Event::Settle) => to(
            JobState::Completed,
            Effects {
                settle: true,
                ..Effects::NONE
            },
        ),
        (JobState::Verifying, Event::Reject(reason)) => Ok(after_failure(job, reason, true)),
        (JobState::Verifying, Event::Proof) => Err(Refusal::new(
            ErrorCode::JobFinished,
            "the job's proof is already in and being verified".to_string(),
        )),
        (JobState::Verifying, _) => Err(Refusal::new(
            ErrorCode::NotAssigned,
            "the job is not assigned: its proof is being verified".to_string(),
        )),
    }
}

/// A failed attempt: requeue while attempts remain and the reason allows it, else fail.
/// `forfeit`: the attempt's pending credit is taken back.
fn after_failure(job: Snapshot, reason: FailReason, forfeit: bool) -> Transition {
    let fail = |failure| Transition {
        state: JobState::Failed,
        attempt: job.attempt,
        effects: Effects {
            lease: Lease::Clear,
            forfeit,
            failure: Some(failure),
            ..Effects::NONE
        },
    };
    match reason.disposition() {
        Disposition::Fail => fail(reason),
        Disposition::Requeue if job.attempt >= job.max_attempts => {
            fail(FailReason::AttemptsExhausted)
        }
        Disposition::Requeue => Transition {
            state: JobState::Queued,
            attempt: job.attempt,
            effects: Effects {
                lease: Lease::Clear,
                forfeit,
                failure: Some(reason),
                wake: true,
                ..Effects::NONE
            },
        },
    }
}

/// The assignment a proof or fail report is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Assignment<'a> {
    pub state: JobState,
    pub attempt: u32,
    /// Key id and miner id holding the lease (set while assigned).
    pub key_id: Option<i64>,
    pub miner_id: Option<&'a str>,
    /// Lease deadline, unix milliseconds.
    pub lease_expires_ms: Option<i64>,
}

/// Who presents a proof or fail report, and what it claims.
#[derive(Clone, Copy, Debug)]
pub struct Claim<'a> {
    pub key_id: i64,
    pub miner_id: Option<&'a str>,
    pub attempt: Option<u32>,
}

/// The verdict on a proof or fail report before the state machine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The claim holds the live lease: go on with the event.
    Accept,
    /// The claim held the lease but it has expired: requeue the job now (apply
    /// [`Event::LeaseExpired`]) and refuse the report with NOT_ASSIGNED.
    Expired,
}

/// Checks that `claim` holds the current, unexpired lease of a job.
///
/// Order: a finished job is JOB_FINISHED; a queued one NOT_ASSIGNED; another key's or miner's
/// lease FORBIDDEN; only then a named attempt that is not the current one STALE_ATTEMPT (so
/// the attempt count is told only to the holder of the lease, never to another key); then the
/// deadline.
pub fn check_report(
    job: Assignment<'_>,
    claim: Claim<'_>,
    now_ms: i64,
) -> Result<Verdict, Refusal> {
    match job.state {
        JobState::Completed | JobState::Failed => {
            return Err(Refusal::new(
                ErrorCode::JobFinished,
                format!("the job is already {}", job.state.as_str()),
            ))
        }
        JobState::Queued => {
            return Err(Refusal::new(
                ErrorCode::NotAssigned,
                "the job is not assigned (its lease expired or it was given back and requeued)"
                    .to_string(),
            ))
        }
        JobState::Verifying => {
            return Err(Refusal::new(
                ErrorCode::JobFinished,
                "the job's proof is already in and being verified".to_string(),
            ))
        }
        JobState::Assigned => {}
    }
    if job.key_id != Some(claim.key_id) {
        return Err(Refusal::new(
            ErrorCode::Forbidden,
            "the job is assigned to another miner".to_string(),
        ));
    }
    if let Some(m) = claim.miner_id {
        if job.miner_id != Some(m) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("the job is not assigned to miner_id {m:?}"),
            ));
        }
    }
    if let Some(attempt) = claim.attempt {
        if attempt != job.attempt {
            return Err(Refusal::new(
                ErrorCode::StaleAttempt,
                format!(
                    "attempt {attempt} is not the job's current attempt ({})",
                    job.attempt
                ),
            ));
        }
    }
    match job.lease_expires_ms {
        Some(deadline) if now_ms > deadline => Ok(Verdict::Expired),
        _ => Ok(Verdict::Accept),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [JobState; 5] = [
        JobState::Queued,
        JobState::Assigned,
        JobState::Verifying,
        JobState::Completed,
        JobState::Failed,
    ];

    fn events() -> Vec<Event> {
        let mut v = vec![
            Event::Assign,
            Event::Proof,
            Event::LeaseExpired,
            Event::Settle,
        ];
        v.extend(FailReason::ALL.into_iter().map(Event::Fail));
        v.extend(FailReason::ALL.into_iter().map(Event::Reject));
        v
    }

    fn snap(state: JobState, attempt: u32) -> Snapshot {
        Snapshot {
            state,
            attempt,
            max_attempts: 3,
        }
    }

    /// Every (state, event, attempt) pair: the allowed transitions are exactly the documented
    /// ones, and nothing leaves a final state.
    #[test]
    fn exhaustive_transition_table() {
        for state in STATES {
            for event in events() {
                for attempt in 0..=4 {
                    let got = step(snap(state, attempt), event);
                    match (state, event) {
                        (JobState::Completed | JobState::Failed, _) => {
                            assert_eq!(got.unwrap_err().code, ErrorCode::JobFinished)
                        }
                        (
                            JobState::Queued | JobState::Assigned,
                            Event::Settle | Event::Reject(_),
                        ) => {
                            assert_eq!(got.unwrap_err().code, ErrorCode::NoAudit)
                        }
                        (JobState::Verifying, Event::Settle) => {
                            let t = got.unwrap();
                            assert_eq!((t.state, t.attempt), (JobState::Completed, attempt));
                            assert!(t.effects.settle && !t.effects.forfeit && !t.effects.credit);
                        }
                        (JobState::Verifying, Event::Reject(r)) => {
                            let t = got.unwrap();
                            assert!(t.effects.forfeit && !t.effects.settle && !t.effects.credit);
                            assert_eq!(t.effects.lease, Lease::Clear);
                            let queued = r.disposition() == Disposition::Requeue && attempt < 3;
                            assert_eq!(t.state == JobState::Queued, queued, "{r:?} {attempt}");
                        }
                        (JobState::Verifying, Event::Proof) => {
                            assert_eq!(got.unwrap_err().code, ErrorCode::JobFinished)
                        }
                        (JobState::Verifying, _) => {
                            assert_eq!(got.unwrap_err().code, ErrorCode::NotAssigned)
                        }
                        (JobState::Queued, Event::Assign) => {
                            let t = got.unwrap();
                            assert_eq!(t.state, JobState::Assigned);
                            assert_eq!(t.attempt, attempt + 1);
                            assert_eq!(t.effects.lease, Lease::Start);
                            assert!(!t.effects.credit);
                        }
                        (JobState::Queued, _) | (JobState::Assigned, Event::Assign) => {
                            assert_eq!(got.unwrap_err().code, ErrorCode::NotAssigned)
                        }
                        (JobState::Assigned, Event::Proof) => {
                            let t = got.unwrap();
                            assert_eq!(t.state, JobState::Verifying);
                            assert_eq!(t.attempt, attempt);
                            assert!(t.effects.credit && !t.effects.settle);
                            assert_eq!(t.effects.lease, Lease::Keep);
                        }
                        (JobState::Assigned, Event::Fail(r)) => {
                            let t = got.unwrap();
                            assert!(!t.effects.credit && !t.effects.forfeit);
                            assert_eq!(t.effects.lease, Lease::Clear);
                            let expect = match r.disposition() {
                                Disposition::Fail => (JobState::Failed, r),
                                Disposition::Requeue if attempt >= 3 => {
                                    (JobState::Failed, FailReason::AttemptsExhausted)
                                }
                                Disposition::Requeue => (JobState::Queued, r),
                            };
                            assert_eq!((t.state, t.effects.failure), (expect.0, Some(expect.1)));
                            assert_eq!(t.effects.wake, t.state == JobState::Queued);
                        }
                        (JobState::Assigned, Event::LeaseExpired) => {
                            let t = got.unwrap();
                            let want = if attempt >= 3 {
                                JobState::Failed
                            } else {
                                JobState::Queued
                            };
                            assert_eq!(t.state, want);
                            assert_eq!(t.effects.wake, want == JobState::Queued);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn attempt_overflow_is_refused_not_wrapped() {
        let e = step(snap(JobState::Queued, u32::MAX), Event::Assign).unwrap_err();
        assert_eq!(e.code, ErrorCode::Internal);
    }

    fn assigned(deadline: i64) -> Assignment<'static> {
        Assignment {
            state: JobState::Assigned,
            attempt: 2,
            key_id: Some(7),
            miner_id: Some("m1"),
            lease_expires_ms: Some(deadline),
        }
    }

    /// Every (key, miner_id, attempt) a report may carry against an assigned job: ownership is
    /// decided before the attempt, so a key that does not hold the lease is FORBIDDEN whatever
    /// attempt it names and never learns the current one from STALE_ATTEMPT.
    #[test]
    fn exhaustive_claim_table_checks_ownership_before_the_attempt() {
        for key_id in [7, 8] {
            for miner_id in [None, Some("m1"), Some("m2")] {
                for attempt in [None, Some(0), Some(1), Some(2), Some(3), Some(u32::MAX)] {
                    let claim = Claim {
                        key_id,
                        miner_id,
                        attempt,
                    };
                    let got = check_report(assigned(100), claim, 50);
                    let want = if key_id != 7 || miner_id == Some("m2") {
                        Err(ErrorCode::Forbidden)
                    } else if attempt.is_some_and(|a| a != 2) {
                        Err(ErrorCode::StaleAttempt)
                    } else {
                        Ok(Verdict::Accept)
                    };
                    if let Err(r) = &got {
                        if r.code == ErrorCode::Forbidden {
                            assert!(!r.message.contains("attempt"), "{}", r.message);
                        }
                    }
                    assert_eq!(got.map_err(|r| r.code), want, "{claim:?}");
                }
            }
        }
    }

    #[test]
    fn report_checks_in_order() {
        let me = Claim {
            key_id: 7,
            miner_id: Some("m1"),
            attempt: Some(2),
        };
        assert_eq!(check_report(assigned(100), me, 100), Ok(Verdict::Accept));
        assert_eq!(check_report(assigned(100), me, 101), Ok(Verdict::Expired));
        let code = |job, claim| check_report(job, claim, 0).unwrap_err().code;
        assert_eq!(
            code(
                assigned(100),
                Claim {
                    attempt: Some(1),
                    ..me
                }
            ),
            ErrorCode::StaleAttempt
        );
        assert_eq!(
            code(assigned(100), Claim { key_id: 8, ..me }),
            ErrorCode::Forbidden
        );
        // Another key naming a wrong attempt is still FORBIDDEN, not STALE_ATTEMPT.
        assert_eq!(
            code(
                assigned(100),
                Claim {
                    key_id: 8,
                    attempt: Some(1),
                    ..me
                }
            ),
            ErrorCode::Forbidden
        );
        assert_eq!(
            code(
                assigned(100),
                Claim {
                    miner_id: Some("m2"),
                    ..me
                }
            ),
            ErrorCode::Forbidden
        );
        let anon = Claim {
            key_id: 7,
            miner_id: None,
            attempt: None,
        };
        assert_eq!(check_report(assigned(100), anon, 0), Ok(Verdict::Accept));
        for (state, want) in [
            (JobState::Queued, ErrorCode::NotAssigned),
            (JobState::Verifying, ErrorCode::JobFinished),
            (JobState::Completed, ErrorCode::JobFinished),
            (JobState::Failed, ErrorCode::JobFinished),
        ] {
            let job = Assignment {
                state,
                ..assigned(100)
            };
            assert_eq!(code(job, me), want);
        }
    }
}
