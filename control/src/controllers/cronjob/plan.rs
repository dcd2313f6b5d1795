//! Plan: the pure decisions of one CronJob sync — which of its Jobs are still active, when
//! it last succeeded, which scheduled time is due, the Job made for it, and which finished
//! Jobs exceed the history limits. Upstream: `pkg/controller/cronjob`
//! (`cronjob_controllerv2.go`, `utils.go`).

use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::schedule::Schedule;
use crate::controllers::job::plan::{condition, is_finished};
use crate::controllers::owner::controller_ref;

/// Upstream's `nextScheduleDelta`: a sync is queued this long after the time it is for, so
/// that the time has surely come.
pub const NEXT_DELTA: Duration = Duration::from_millis(100);
/// More missed times than this are worth a warning (upstream's "too many missed").
pub const MANY_MISSED: i64 = 100;
/// What a Job made for a scheduled time carries, in RFC 3339 in the CronJob's time zone.
pub const SCHEDULED_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// A time zone by IANA name, as the controller reads `spec.timeZone` (UTC when unset).
pub type Zone = jiff::tz::TimeZone;

pub fn zone(cronjob: &CronJob) -> Result<Zone, jiff::Error> {
    match cronjob.spec.time_zone.as_deref() {
        None => Ok(Zone::UTC),
        Some(name) => Zone::get(name),
    }
}

/// The Job refs of `status.active` after looking at the CronJob's own Jobs, its last success,
/// and what it is worth an event: finished Jobs leave the list (`SawCompletedJob`), an
/// unfinished Job missing from the list is reported (`UnexpectedJob`, as upstream, not
/// adopted), and the latest completion of a succeeded Job is the last success.
#[derive(Debug, Default, PartialEq)]
pub struct Active {
    pub status: CronJobStatus,
    /// (reason, note) of Normal events, and of Warning ones.
    pub normal: Vec<(&'static str, String)>,
    pub warnings: Vec<(&'static str, String)>,
    /// Refs in the list whose Job the store does not show: to be confirmed gone by a read.
    pub unseen: Vec<ObjectReference>,
}

pub fn active(cronjob: &CronJob, jobs: &[&Job]) -> Active {
    let mut status = cronjob.status.clone().unwrap_or_default();
    let mut out = Active::default();
    let listed = |status: &CronJobStatus, uid: &str| {
        status
            .active
            .iter()
            .flatten()
            .any(|r| r.uid.as_deref() == Some(uid))
    };
    for job in jobs {
        let uid = job.metadata.uid.clone().unwrap_or_default();
        let found = listed(&status, &uid);
        if !is_finished(job) {
            if !found {
                out.warnings.push((
                    "UnexpectedJob",
                    format!(
                        "Saw a job that the controller did not create or forgot: {}",
                        job.name_any()
                    ),
                ));
            }
            continue;
        }
        if found {
            let finished = finished_as(job).unwrap_or_default();
            if let Some(list) = status.active.as_mut() {
                list.retain(|r| r.uid.as_deref() != Some(uid.as_str()));
            }
            out.normal.push((
                "SawCompletedJob",
                format!(
                    "Saw completed job: {}, condition: {finished}",
                    job.name_any()
                ),
            ));
        }
        if finished_as(job) == Some("Complete") {
            let completed = job.status.as_ref().and_then(|s| s.completion_time.clone());
            if let Some(completed) = completed {
                let later = status
                    .last_successful_time
                    .as_ref()
                    .is_none_or(|last| completed.0 > last.0);
                if later {
                    status.last_successful_time = Some(completed);
                }
            }
        }
    }
    let seen: Vec<&str> = jobs
        .iter()
        .filter_map(|j| j.metadata.uid.as_deref())
        .collect();
    out.unseen = status
        .active
        .iter()
        .flatten()
        .filter(|r| !r.uid.as_deref().is_some_and(|u| seen.contains(&u)))
        .cloned()
        .collect();
    out.status = status;
    out
}

/// `Complete` or `Failed`, for a finished Job.
pub fn finished_as(job: &Job) -> Option<&'static str> {
    let status = job.status.as_ref();
    ["Complete", "Failed"]
        .into_iter()
        .find(|t| condition(status, t).is_some_and(|c| c.status == "True"))
}

/// Where the CronJob stands against its schedule at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The time after which scheduled times count.
    pub earliest: Timestamp,
    /// The latest scheduled time in (earliest, now], if any.
    pub latest: Option<Timestamp>,
    /// How many scheduled times fell in that span (roughly, as upstream counts them).
    pub missed: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DueError {
    #[error("the schedule never fires")]
    Never,
    #[error("time difference between two schedules is less than 1 second")]
    TooClose,
}

/// Upstream's `mostRecentScheduleTime`: from the last scheduled time (or the creation), not
/// before `startingDeadlineSeconds` ago when `with_deadline`, the latest time due by `now`.
pub fn due(
    cronjob: &CronJob,
    now: Timestamp,
    schedule: &Schedule,
    zone: &Zone,
    with_deadline: bool,
) -> Result<Due, DueError> {
    let created = cronjob
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0);
    let mut earliest = cronjob
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.as_ref())
        .map_or(created, |t| t.0);
    let deadline = cronjob.spec.starting_deadline_seconds;
    if with_deadline && let Some(seconds) = deadline {
        let limit = now - jiff::SignedDuration::from_secs(seconds);
        if limit > earliest {
            earliest = limit;
        }
    }
    let none = Due {
        earliest,
        latest: None,
        missed: 0,
    };
    let Some(t1) = schedule.next(earliest, zone) else {
        return Err(DueError::Never);
    };
    if now < t1 {
        return Ok(none);
    }
    let Some(t2) = schedule.next(t1, zone) else {
        return Ok(Due {
            latest: Some(t1),
            missed: 1,
            ..none
        });
    };
    if now < t2 {
        return Ok(Due {
            latest: Some(t1),
            ..none
        });
    }
    let between = (t2 - t1).get_seconds();
    if between < 1 {
        return Err(DueError::TooClose);
    }
    let missed = (now - t1).get_seconds() / between + 1;
    // Start two intervals before the estimate and walk to now: exact for irregular schedules.
    let start = t1 + jiff::SignedDuration::from_secs((missed - 2) * between);
    let mut latest = None;
    let mut t = schedule.next(start, zone);
    while let Some(at) = t.filter(|at| *at <= now) {
        latest = Some(at);
        t = schedule.next(at, zone);
    }
    Ok(Due {
        latest,
        missed,
        ..none
    })
}

/// Upstream's `nextScheduleTimeDuration`: how long until the sync for the next scheduled time.
pub fn requeue_after(
    cronjob: &CronJob,
    now: Timestamp,
    schedule: &Schedule,
    zone: &Zone,
) -> Option<Duration> {
    let from = match due(cronjob, now, schedule, zone, false) {
        Ok(Due {
            latest: Some(latest),
            ..
        }) => latest,
        Ok(Due {
            earliest,
            missed: 0,
            ..
        }) => earliest,
        _ => now,
    };
    let next = schedule.next(from, zone)?;
    let wait = Duration::try_from(next - now).unwrap_or(Duration::ZERO);
    Some(wait + NEXT_DELTA)
}

/// Upstream's `getJobName`: the CronJob's name and the scheduled minute since the epoch, so
/// that one scheduled time makes at most one Job.
pub fn job_name(cronjob: &CronJob, scheduled: Timestamp) -> String {
    format!("{}-{}", cronjob.name_any(), scheduled.as_second() / 60)
}

/// Upstream's `getJobFromTemplate2`: the Job for `scheduled`, controlled by the CronJob.
pub fn job_for(cronjob: &CronJob, scheduled: Timestamp, zone: &Zone) -> Option<Job> {
    let template = cronjob.spec.job_template.clone();
    let meta = template.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    let stamp = scheduled
        .to_zoned(zone.clone())
        .strftime("%Y-%m-%dT%H:%M:%S%:z");
    // RFC 3339 writes UTC as `Z`, as Go's time.RFC3339 does.
    let stamp = stamp.to_string().replace("+00:00", "Z");
    annotations.insert(SCHEDULED_ANNOTATION.to_owned(), stamp);
    Some(Job {
        metadata: ObjectMeta {
            name: Some(job_name(cronjob, scheduled)),
            namespace: cronjob.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_ref(cronjob)?]),
            ..ObjectMeta::default()
        },
        spec: Some(template.spec.unwrap_or_default()),
        status: None,
    })
}

/// The ref `status.active` keeps for a Job.
pub fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

/// Finished Jobs beyond `successfulJobsHistoryLimit` and `failedJobsHistoryLimit`, oldest
/// started first (upstream's `byJobStartTime`: unstarted last, then by name).
pub fn beyond_history<'a>(cronjob: &CronJob, jobs: &[&'a Job]) -> Vec<&'a Job> {
    let limits = [
        ("Complete", cronjob.spec.successful_jobs_history_limit),
        ("Failed", cronjob.spec.failed_jobs_history_limit),
    ];
    let mut doomed = Vec::new();
    for (outcome, limit) in limits {
        let Some(limit) = limit else { continue };
        let mut finished: Vec<&Job> = jobs
            .iter()
            .copied()
            .filter(|j| finished_as(j) == Some(outcome))
            .collect();
        let keep = usize::try_from(limit).unwrap_or(0);
        if finished.len() <= keep {
            continue;
        }
        finished.sort_by_key(|j| {
            let started = j.status.as_ref().and_then(|s| s.start_time.as_ref());
            (started.is_none(), started.map(|t| t.0), j.name_any())
        });
        let extra = finished.len() - keep;
        doomed.extend(finished.into_iter().take(extra));
    }
    doomed
}

/// Whether the status differs in what the API server keeps (an empty active list is none).
pub fn status_changed(before: Option<&CronJobStatus>, after: &CronJobStatus) -> bool {
    let norm = |s: &CronJobStatus| {
        let mut s = s.clone();
        if s.active.as_ref().is_some_and(Vec::is_empty) {
            s.active = None;
        }
        s
    };
    norm(&before.cloned().unwrap_or_default()) != norm(after)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::{
        CronJobSpec, JobCondition, JobSpec, JobStatus, JobTemplateSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("a timestamp")
    }

    fn cronjob(schedule: &str, created: &str) -> CronJob {
        CronJob {
            metadata: ObjectMeta {
                name: Some("tick".into()),
                namespace: Some("ns".into()),
                uid: Some("uid-tick".into()),
                creation_timestamp: Some(Time(at(created))),
                ..ObjectMeta::default()
            },
            spec: CronJobSpec {
                schedule: schedule.into(),
                job_template: JobTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some([("app".to_owned(), "tick".to_owned())].into()),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(JobSpec::default()),
                },
                successful_jobs_history_limit: Some(1),
                failed_jobs_history_limit: Some(1),
                ..CronJobSpec::default()
            },
            status: None,
        }
    }

    fn job(name: &str, outcome: Option<&str>, started: Option<&str>) -> Job {
        let conditions = outcome.map(|o| {
            vec![JobCondition {
                type_: o.into(),
                status: "True".into(),
                ..JobCondition::default()
            }]
        });
        Job {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{name}")),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(JobStatus {
                conditions,
                start_time: started.map(|s| Time(at(s))),
                completion_time: (outcome == Some("Complete")).then(|| {
                    Time(
                        at(started.unwrap_or("2026-11-27T00:00:00Z"))
                            + jiff::SignedDuration::from_secs(5),
                    )
                }),
                ..JobStatus::default()
            }),
        }
    }

    fn listed(cj: &mut CronJob, jobs: &[&Job]) {
        cj.status.get_or_insert_with(Default::default).active =
            Some(jobs.iter().map(|j| job_ref(j)).collect());
    }

    #[test]
    fn due_is_the_latest_time_since_the_last_one_and_counts_the_missed() {
        let schedule = Schedule::parse("*/1 * * * *").expect("parses");
        let mut cj = cronjob("*/1 * * * *", "2026-11-27T04:00:30Z");
        let now = at("2026-11-27T04:00:50Z");
        let due = due(&cj, now, &schedule, &Zone::UTC, true).expect("fires");
        assert_eq!((due.latest, due.missed), (None, 0), "nothing yet");

        let now = at("2026-11-27T04:05:10Z");
        let due = super::due(&cj, now, &schedule, &Zone::UTC, true).expect("fires");
        assert_eq!(due.latest, Some(at("2026-11-27T04:05:00Z")));
        assert_eq!(due.missed, 5);
        assert_eq!(
            requeue_after(&cj, now, &schedule, &Zone::UTC),
            Some(Duration::from_secs(50) + NEXT_DELTA)
        );

        cj.status = Some(CronJobStatus {
            last_schedule_time: Some(Time(at("2026-11-27T04:05:00Z"))),
            ..CronJobStatus::default()
        });
        let again = super::due(&cj, now, &schedule, &Zone::UTC, true).expect("fires");
        assert_eq!(again.latest, None, "the time is taken");

        // A starting deadline of 30 s puts older times out of reach.
        cj.status = None;
        cj.spec.starting_deadline_seconds = Some(30);
        let late = super::due(&cj, at("2026-11-27T04:05:40Z"), &schedule, &Zone::UTC, true)
            .expect("fires");
        assert_eq!(late.latest, None);
        assert_eq!(late.earliest, at("2026-11-27T04:05:10Z"));
    }

    #[test]
    fn finished_jobs_leave_the_active_list_and_gone_ones_are_to_be_confirmed() {
        let mut cj = cronjob("* * * * *", "2026-11-27T00:00:00Z");
        let done = job("tick-1", Some("Complete"), Some("2026-11-27T01:00:00Z"));
        let failed = job("tick-2", Some("Failed"), Some("2026-11-27T01:01:00Z"));
        let running = job("tick-3", None, Some("2026-11-27T01:02:00Z"));
        let gone = job("tick-0", None, None);
        let stray = job("tick-9", None, None);
        listed(&mut cj, &[&done, &failed, &running, &gone]);
        let out = active(&cj, &[&done, &failed, &running, &stray]);
        let names: Vec<_> = out
            .status
            .active
            .iter()
            .flatten()
            .filter_map(|r| r.name.clone())
            .collect();
        assert_eq!(names, ["tick-3", "tick-0"]);
        assert_eq!(
            out.status.last_successful_time.map(|t| t.0),
            Some(at("2026-11-27T01:00:05Z"))
        );
        let reasons: Vec<_> = out
            .normal
            .iter()
            .map(|(r, n)| format!("{r}: {n}"))
            .collect();
        assert_eq!(
            reasons,
            [
                "SawCompletedJob: Saw completed job: tick-1, condition: Complete",
                "SawCompletedJob: Saw completed job: tick-2, condition: Failed"
            ]
        );
        assert_eq!(out.warnings.len(), 1, "the stray is reported, not adopted");
        assert_eq!(out.unseen.len(), 1);
        assert_eq!(out.unseen[0].name.as_deref(), Some("tick-0"));
    }

    #[test]
    fn the_job_is_named_after_its_minute_and_annotated_in_the_time_zone() {
        let cj = cronjob("0 9 * * *", "2026-11-27T00:00:00Z");
        let scheduled = at("2026-11-27T14:00:00Z");
        let made = job_for(&cj, scheduled, &Zone::UTC).expect("a job");
        assert_eq!(made.metadata.name.as_deref(), Some("tick-29929800"));
        let annotations = made.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(annotations[SCHEDULED_ANNOTATION], "2026-11-27T14:00:00Z");
        assert_eq!(
            made.metadata.labels,
            cj.spec.job_template.metadata.clone().and_then(|m| m.labels)
        );
        let owner = &made.metadata.owner_references.expect("owned")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("CronJob", Some(true))
        );

        let zone = Zone::get("America/New_York").expect("zoneinfo");
        let made = job_for(&cj, scheduled, &zone).expect("a job");
        let annotations = made.metadata.annotations.unwrap_or_default();
        assert_eq!(
            annotations[SCHEDULED_ANNOTATION],
            "2026-11-27T09:00:00-05:00"
        );
    }

    #[test]
    fn history_beyond_the_limits_goes_oldest_first() {
        let cj = cronjob("* * * * *", "2026-11-27T00:00:00Z");
        let old = job("a", Some("Complete"), Some("2026-11-27T01:00:00Z"));
        let new = job("b", Some("Complete"), Some("2026-11-27T02:00:00Z"));
        let failed = job("c", Some("Failed"), Some("2026-11-27T01:30:00Z"));
        let running = job("d", None, Some("2026-11-27T00:30:00Z"));
        let doomed = beyond_history(&cj, &[&new, &old, &failed, &running]);
        let names: Vec<_> = doomed.iter().map(|j| j.name_any()).collect();
        assert_eq!(
            names,
            ["a"],
            "one of each kept; running jobs are not history"
        );
    }

    #[test]
    fn an_empty_active_list_is_no_change() {
        let before = CronJobStatus::default();
        let after = CronJobStatus {
            active: Some(Vec::new()),
            ..CronJobStatus::default()
        };
        assert!(!status_changed(Some(&before), &after));
        assert!(status_changed(
            None,
            &CronJobStatus {
                last_schedule_time: Some(Time(at("2026-11-27T00:00:00Z"))),
                ..CronJobStatus::default()
            }
        ));
    }
}
