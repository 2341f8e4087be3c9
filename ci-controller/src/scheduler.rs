//! Which queued jobs start, when there are more than free slots: fairly
//! between users, so one user's hundred jobs do not keep another's one waiting.
//!
//! Pure, so fairness is tested without Docker: each slot goes to the oldest
//! job of the user with the fewest jobs running, and between such users, to
//! the one served longest ago (round robin).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use ci_common::{Job, JobId, UserId};

/// A queued job that may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub job_id: JobId,
    pub user_id: UserId,
    pub created_at: DateTime<Utc>,
}

impl From<&Job> for Candidate {
    fn from(job: &Job) -> Self {
        Candidate {
            job_id: job.id,
            user_id: job.user_id,
            created_at: job.created_at,
        }
    }
}

/// When each user last had a job started, as a turn number: a later turn
/// was served more recently. Kept by the reconciler across passes.
#[derive(Debug, Clone, Default)]
pub struct Turns {
    last_served: HashMap<UserId, u64>,
    next: u64,
}

impl Turns {
    /// Notes that `user` had a job started now.
    pub fn served(&mut self, user: UserId) {
        self.next += 1;
        self.last_served.insert(user, self.next);
    }

    /// `None` for a user never served, who comes before everyone served.
    fn last(&self, user: &UserId) -> Option<u64> {
        self.last_served.get(user).copied()
    }
}

/// The jobs to start now, in order: at most `free` of `eligible`, given how
/// many jobs each user has running and who was served when. `turns` records
/// the starts, so that the next pass continues the round.
pub fn pick(
    eligible: &[Candidate],
    running_per_user: &HashMap<UserId, usize>,
    turns: &mut Turns,
    free: usize,
) -> Vec<JobId> {
    let mut running = running_per_user.clone();
    let mut waiting: Vec<Candidate> = eligible.to_vec();
    let mut starts = Vec::new();
    while starts.len() < free {
        let Some((index, _)) = waiting.iter().enumerate().min_by_key(|(_, c)| {
            (
                running.get(&c.user_id).copied().unwrap_or(0),
                turns.last(&c.user_id),
                c.created_at,
            )
        }) else {
            break;
        };
        let chosen = waiting.remove(index);
        *running.entry(chosen.user_id).or_default() += 1;
        turns.served(chosen.user_id);
        starts.push(chosen.job_id);
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserId {
        UserId::random()
    }

    /// `n` jobs of `user`, created a second apart from `from` seconds on.
    fn jobs(user: UserId, from: i64, n: i64) -> Vec<Candidate> {
        let t0 = DateTime::<Utc>::UNIX_EPOCH;
        (0..n)
            .map(|i| Candidate {
                job_id: JobId::random(),
                user_id: user,
                created_at: t0 + chrono::Duration::seconds(from + i),
            })
            .collect()
    }

    fn owners(starts: &[JobId], all: &[Candidate]) -> Vec<UserId> {
        starts
            .iter()
            .map(|id| {
                all.iter()
                    .find(|c| c.job_id == *id)
                    .map(|c| c.user_id)
                    .expect("the scheduler starts only jobs it was given")
            })
            .collect()
    }

    #[test]
    fn no_more_start_than_there_are_free_slots() {
        let a = user();
        let all = jobs(a, 0, 5);
        let mut turns = Turns::default();
        assert_eq!(pick(&all, &HashMap::new(), &mut turns, 2).len(), 2);
        assert!(pick(&all, &HashMap::new(), &mut turns, 0).is_empty());
        assert_eq!(pick(&all[..1], &HashMap::new(), &mut turns, 3).len(), 1);
    }

    #[test]
    fn one_users_jobs_start_oldest_first() {
        let a = user();
        let mut all = jobs(a, 0, 3);
        all.reverse();
        let starts = pick(&all, &HashMap::new(), &mut Turns::default(), 3);
        let oldest_first: Vec<JobId> = all.iter().rev().map(|c| c.job_id).collect();
        assert_eq!(starts, oldest_first);
    }

    #[test]
    fn a_user_with_a_backlog_does_not_keep_another_waiting() {
        let (a, b) = (user(), user());
        // A queued ten jobs long before B's one.
        let mut all = jobs(a, 0, 10);
        all.extend(jobs(b, 100, 1));
        let starts = pick(&all, &HashMap::new(), &mut Turns::default(), 2);
        let mut got = owners(&starts, &all);
        got.sort();
        let mut expected = vec![a, b];
        expected.sort();
        assert_eq!(got, expected);
    }

    #[test]
    fn the_user_with_fewer_jobs_running_goes_first() {
        let (a, b) = (user(), user());
        let mut all = jobs(a, 0, 3);
        all.extend(jobs(b, 100, 3));
        let running = HashMap::from([(a, 2)]);
        let starts = pick(&all, &running, &mut Turns::default(), 3);
        // B catches up with A's two running; from the tie, A (never served
        // by this scheduler) goes before B (just served).
        assert_eq!(owners(&starts, &all), [b, b, a]);
    }

    #[test]
    fn between_equals_the_user_served_longest_ago_goes_first_across_passes() {
        let (a, b) = (user(), user());
        let mut all = jobs(a, 0, 5);
        all.extend(jobs(b, 100, 5));
        let mut turns = Turns::default();
        // One slot per pass, nothing running in between (each job ended
        // before the next pass): the users take turns, A's older job first.
        let mut order = Vec::new();
        let mut waiting = all.clone();
        for _ in 0..4 {
            let started = pick(&waiting, &HashMap::new(), &mut turns, 1);
            waiting.retain(|c| !started.contains(&c.job_id));
            order.extend(owners(&started, &all));
        }
        assert_eq!(order, [a, b, a, b]);
    }
}
