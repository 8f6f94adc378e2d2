//! What an agent's upgrade state means and how its check-ins move it: Fleet's rules, kept out
//! of the store, which records the states these rules decide (`UpgradeRule`).

use crate::store::{CheckinUpdate, StoredUpgrade, UpgradeStep};

/// The upgrade state an agent has between the UPGRADE action and its first report.
pub(crate) const REQUESTED: &str = "UPG_REQUESTED";
/// The upgrade state after the admin cancelled the upgrade.
pub(crate) const CANCELLED: &str = "UPG_CANCELLED";
const COMPLETED: &str = "UPG_COMPLETED";
const FAILED: &str = "UPG_FAILED";
/// Reported by agents that rolled back by themselves.
const ROLLBACK: &str = "UPG_ROLLBACK";
/// Details whose state is missing or not a string.
const UNKNOWN: &str = "UPG_UNKNOWN";

/// Whether an agent in upgrade state `state` is done upgrading, one way or another (otherwise
/// `agents list` shows it as `updating`).
pub(crate) fn finished(state: &str) -> bool {
    [COMPLETED, FAILED, ROLLBACK, CANCELLED].contains(&state)
}

/// The rule the store applies to each check-in report it writes.
pub(crate) fn after_checkin(stored: &StoredUpgrade, report: &CheckinUpdate) -> UpgradeStep {
    let details: Option<serde_json::Value> =
        report.upgrade_details.as_deref().and_then(|d| serde_json::from_str(d).ok());
    let state = next_state(
        stored.details,
        stored.state.as_deref(),
        stored.target.as_deref(),
        &report.version,
        details.as_ref(),
    );
    let completed =
        state.as_deref() == Some(COMPLETED) && stored.state.as_deref() != Some(COMPLETED);
    UpgradeStep { state, completed }
}

/// The upgrade state after a check-in, from what the agent sent (`details`, its version) and
/// what was stored. Agents >= 8.12 report `upgrade_details` while an upgrade runs and stop
/// sending it when done; older ones only show the new version.
fn next_state(
    stored_details: bool,
    stored_state: Option<&str>,
    target: Option<&str>,
    version: &str,
    details: Option<&serde_json::Value>,
) -> Option<String> {
    if let Some(details) = details {
        let state = details.get("state").and_then(serde_json::Value::as_str);
        return Some(state.filter(|s| !s.is_empty()).unwrap_or(UNKNOWN).to_owned());
    }
    // Reached when the versions are equal in Elastic's order (build metadata does not count:
    // the User-Agent of 8.14.1+build… may differ from the target's build), snapshot marks
    // aside: the User-Agent names no `-SNAPSHOT`, so a snapshot target is reached at its
    // release. A stored string that is no version (older rows) is compared as spelled.
    let reached = target.is_some_and(|t| {
        use ferry_artifacts::Version;
        match (t.parse::<Version>(), version.parse::<Version>()) {
            (Ok(t), Ok(v)) => t.without_snapshot().precedence_cmp(&v.without_snapshot()).is_eq(),
            _ => t == version,
        }
    });
    if stored_details {
        // Details stopped: done, unless the agent is still not on the target (a rollback).
        return Some(if reached || target.is_none() { COMPLETED } else { FAILED }.into());
    }
    if reached && stored_state == Some(REQUESTED) {
        return Some(COMPLETED.into());
    }
    stored_state.map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_states_follow_details_and_versions() {
        let d = serde_json::json!({"state": "UPG_DOWNLOADING"});
        let odd = serde_json::json!({"state": 5});
        let st = |had, stored, target, version, details| {
            next_state(had, stored, target, version, details)
        };
        assert_eq!(st(false, None, None, "9.1.2", Some(&d)).as_deref(), Some("UPG_DOWNLOADING"));
        assert_eq!(
            st(false, None, None, "9.1.2", Some(&odd)).as_deref(),
            Some("UPG_UNKNOWN"),
            "odd details never fail"
        );
        // Details stop: done if on the target, failed (rolled back) if not.
        assert_eq!(st(true, None, Some("9.2.2"), "9.2.2", None).as_deref(), Some("UPG_COMPLETED"));
        assert_eq!(st(true, None, Some("9.2.2"), "9.1.2", None).as_deref(), Some("UPG_FAILED"));
        assert_eq!(
            st(true, None, Some("9.2.2-SNAPSHOT"), "9.2.2", None).as_deref(),
            Some("UPG_COMPLETED"),
            "the User-Agent names no -SNAPSHOT"
        );
        // Agents after details stop, by target and reported version.
        for (target, version, state) in [
            ("8.14.1+build202406201002", "8.14.1+build202406201002", "UPG_COMPLETED"),
            // Build metadata is not compared: a rebuilt 8.14.1 is 8.14.1.
            ("8.14.1+build202406201002", "8.14.1", "UPG_COMPLETED"),
            ("8.14.1", "8.14.1+build202406201002", "UPG_COMPLETED"),
            ("8.14.1+build202406201002", "8.14.0+build202405010000", "UPG_FAILED"),
            ("8.14.2", "8.14.1+build202406201002", "UPG_FAILED"),
            ("9.3.0-SNAPSHOT", "9.3.0-SNAPSHOT", "UPG_COMPLETED"),
            ("9.3.0-SNAPSHOT", "9.3.1", "UPG_FAILED"),
            ("9.3.0", "9.3.0-SNAPSHOT", "UPG_COMPLETED"),
            ("9.0.0-beta1-SNAPSHOT", "9.0.0-beta1", "UPG_COMPLETED"),
            ("9.0.0-beta1", "9.0.0-beta1", "UPG_COMPLETED"),
            // A pre-release is not its release, either way.
            ("9.0.0-beta1", "9.0.0", "UPG_FAILED"),
            ("9.0.0", "9.0.0-beta1", "UPG_FAILED"),
            ("9.0.0-rc1", "9.0.0-beta1", "UPG_FAILED"),
            // Not a prefix match on text: 9.2.20 is not 9.2.2.
            ("9.2.2", "9.2.20", "UPG_FAILED"),
            // Unparsable stored strings are compared as spelled.
            ("weird", "weird", "UPG_COMPLETED"),
            ("weird", "9.2.2", "UPG_FAILED"),
        ] {
            assert_eq!(
                st(true, None, Some(target), version, None).as_deref(),
                Some(state),
                "{target} reported as {version}"
            );
        }
        // Agents before 8.12 send no details: the version tells.
        assert_eq!(
            st(false, Some(REQUESTED), Some("9.2.2"), "9.2.2", None).as_deref(),
            Some("UPG_COMPLETED")
        );
        assert_eq!(
            st(false, Some(REQUESTED), Some("9.2.2"), "9.1.2", None).as_deref(),
            Some(REQUESTED)
        );
        assert_eq!(
            st(false, Some(REQUESTED), Some("8.14.1+build202406201002"), "8.14.1", None).as_deref(),
            Some("UPG_COMPLETED")
        );
        assert_eq!(
            st(false, Some(REQUESTED), Some("9.3.0-SNAPSHOT"), "9.3.0", None).as_deref(),
            Some("UPG_COMPLETED")
        );
        assert_eq!(st(false, None, None, "9.1.2", None), None);
    }

    fn report(version: &str, details: Option<&str>) -> CheckinUpdate {
        CheckinUpdate {
            agent_id: "a".into(),
            access_key_id: "ka".into(),
            at: "2026-06-01T00:00:00Z".into(),
            status: "online".into(),
            message: String::new(),
            version: version.into(),
            local_metadata: None,
            components: None,
            upgrade_details: details.map(str::to_owned),
            running: None,
            cursor: None,
        }
    }

    #[test]
    fn an_upgrade_completes_once() {
        let stored = |details, state: &str| StoredUpgrade {
            details,
            state: Some(state.into()),
            target: Some("9.2.2".into()),
        };
        let done = after_checkin(&stored(false, REQUESTED), &report("9.2.2", None));
        assert_eq!(done, UpgradeStep { state: Some(COMPLETED.into()), completed: true });
        // Reports after that keep the state, and the time it was reached.
        let again = after_checkin(&stored(false, COMPLETED), &report("9.2.2", None));
        assert_eq!(again, UpgradeStep { state: Some(COMPLETED.into()), completed: false });
        let running = after_checkin(
            &stored(false, REQUESTED),
            &report("9.1.2", Some(r#"{"state":"UPG_DOWNLOADING"}"#)),
        );
        assert_eq!(
            running,
            UpgradeStep { state: Some("UPG_DOWNLOADING".into()), completed: false }
        );
        // Details that are no JSON count as absent.
        let broken = after_checkin(&stored(true, "UPG_WATCHING"), &report("9.1.2", Some("{")));
        assert_eq!(broken, UpgradeStep { state: Some(FAILED.into()), completed: false });
    }

    #[test]
    fn what_counts_as_finished() {
        for state in [COMPLETED, FAILED, ROLLBACK, CANCELLED] {
            assert!(finished(state), "{state}");
        }
        for state in [REQUESTED, "UPG_DOWNLOADING", "UPG_WATCHING", UNKNOWN] {
            assert!(!finished(state), "{state}");
        }
    }
}
