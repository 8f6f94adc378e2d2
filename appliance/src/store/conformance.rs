//! The conformance suite: the invariants of [`crate::store`] as tests written against the
//! traits only, so every backend runs the same ones. A backend's tests instantiate it with one
//! line, `conformance::suite!(fresh)`, where `fresh()` returns a guard and a new, empty
//! `Box<dyn Store>` (the guard removes the store's database when dropped), or an `Option` of
//! them for a backend whose server may not be installed where the tests run (`None`: the test
//! passes without checking anything, see `ferry_testkit::postgres`).

use std::sync::Mutex;

use super::{
    ActionEffect, ActionResult, ActionTarget, AgentKey, AgentPage, AgentRecord, AuditOutcome,
    CheckinUpdate, ChunkRecord, Enrollment, KeyState, NewAction, NewEnrollmentToken, PolicyAck,
    ReleaseRecord, SecretRecord, Store, StoreError, StoredUpgrade, TokenSecret, UpgradeStep,
    UploadRecord, UploadStatus,
};

/// One `#[test]` per function of the suite, each on a fresh store from `$fresh`. A function
/// added to the suite and not listed here is dead code, which the lints refuse.
macro_rules! suite {
    ($fresh:path) => {
        $crate::store::conformance::suite!(@each $fresh;
            floors_never_go_down,
            the_active_pointer_names_a_stored_release,
            releases_read_back_as_recorded,
            enrollment_tokens_check_until_revoked,
            credential_ids_are_live_keys_and_tokens,
            enrollment_is_decided_where_it_is_written,
            a_new_agent_starts_after_every_action,
            revocation_tombstones_the_id,
            parked_agents_are_touched_and_inactive_ones_are_not,
            check_in_reports_are_written_for_the_key_they_came_with,
            check_ins_apply_the_upgrade_rule,
            audit_annotations_last_until_the_next_report,
            agent_views_page_in_enrollment_order,
            agents_in_policy_are_the_active_ones,
            policy_revisions_only_go_up,
            running_revisions_never_go_back_nor_past_what_was_issued,
            actions_are_delivered_in_order_within_their_limits,
            action_cursors_never_go_back,
            a_cancel_hides_its_target_from_the_agents_it_names,
            action_ids_are_unique,
            acknowledgements_are_recorded_per_agent,
            recent_actions_of_a_kind_come_newest_first,
            uploads_go_from_awaiting_to_ready_or_error,
            an_output_key_goes_from_intent_to_active_and_replaces_the_old_one,
            output_keys_die_with_their_agent,
            secrets_are_kept_sealed_one_per_id_in_id_order,
            removing_a_secret_says_whether_there_was_one,
        );
    };
    (@each $fresh:path; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let fresh = $crate::store::conformance::Fresh::into_fresh($fresh());
                let Some((_guard, mut store)) = fresh else { return };
                $crate::store::conformance::$name(&mut *store);
            }
        )*
    };
}
pub(crate) use suite;

/// What a backend's `fresh()` gives the suite: a guard and a store, or maybe them.
pub(crate) trait Fresh {
    type Guard;
    fn into_fresh(self) -> Option<(Self::Guard, Box<dyn Store>)>;
}

impl<G> Fresh for (G, Box<dyn Store>) {
    type Guard = G;
    fn into_fresh(self) -> Option<(G, Box<dyn Store>)> {
        Some(self)
    }
}

impl<G> Fresh for Option<(G, Box<dyn Store>)> {
    type Guard = G;
    fn into_fresh(self) -> Option<(G, Box<dyn Store>)> {
        self
    }
}

const T1: &str = "2026-01-01T00:00:00Z";
const T2: &str = "2026-02-01T00:00:00Z";
const T3: &str = "2026-03-01T00:00:00Z";
const T4: &str = "2026-04-01T00:00:00Z";
const T5: &str = "2026-05-01T00:00:00Z";
const NOW: &str = "2026-06-01T00:00:00Z";
const FAR: &str = "2099-01-01T00:00:00Z";

pub(crate) fn release(name: &str, sequence: u64, at: &str) -> ReleaseRecord {
    ReleaseRecord {
        name: name.into(),
        sequence,
        created: at.into(),
        expires: FAR.into(),
        key_id: "RWQKEY".into(),
        entries: 7,
        payload_bytes: 1 << 30,
        manifest_sha256: "ab".repeat(32),
        imported_at: at.into(),
    }
}

pub(crate) fn token(id: &str, policy_id: &str) -> NewEnrollmentToken {
    NewEnrollmentToken {
        id: id.into(),
        secret_sha256: format!("{id}-secret-hash"),
        policy_id: policy_id.into(),
        name: Some("web servers".into()),
        created: T1.into(),
    }
}

pub(crate) fn agent(id: &str, key: &str) -> AgentRecord {
    AgentRecord {
        id: id.into(),
        access_key_id: key.into(),
        access_secret_sha256: "00".repeat(32),
        policy_id: "p".into(),
        kind: "PERMANENT".into(),
        enrolled_at: T1.into(),
        active: true,
        version: "9.1.2".into(),
        local_metadata: "{}".into(),
        tags: "[]".into(),
        replace_token: None,
    }
}

fn enroll(s: &mut dyn Store, id: &str, key: &str) {
    assert_eq!(s.enroll_agent(&agent(id, key), None).unwrap(), Enrollment::Stored, "{id}");
}

fn action(id: &str, agents: &[&str], expiration: &str, effect: ActionEffect) -> NewAction {
    NewAction {
        id: id.into(),
        kind: "SETTINGS".into(),
        data: Some(r#"{"log_level":"debug"}"#.into()),
        created_at: T1.into(),
        start_time: None,
        expiration: expiration.into(),
        agents: agents.iter().map(|a| (*a).to_owned()).collect(),
        effect,
    }
}

pub(crate) fn report(id: &str, key: &str) -> CheckinUpdate {
    CheckinUpdate {
        agent_id: id.into(),
        access_key_id: key.into(),
        at: NOW.into(),
        status: "online".into(),
        message: String::new(),
        version: "9.1.2".into(),
        local_metadata: None,
        components: None,
        upgrade_details: None,
        running: None,
        cursor: None,
    }
}

/// An upgrade rule that leaves the upgrade fields as stored.
pub(crate) fn unchanged(stored: &StoredUpgrade, _: &CheckinUpdate) -> UpgradeStep {
    UpgradeStep { state: stored.state.clone(), completed: false }
}

fn ids(views: &[super::AgentView]) -> Vec<&str> {
    views.iter().map(|v| v.id.as_str()).collect()
}

fn pending_ids(s: &dyn Store, agent: &str, after: i64) -> Vec<String> {
    s.pending_actions(agent, after, NOW, 1000).unwrap().into_iter().map(|a| a.id).collect()
}

pub(crate) fn floors_never_go_down(s: &mut dyn Store) {
    assert_eq!(s.floor("site").unwrap(), None);
    s.activate_new(&release("site", 3, T1)).unwrap();
    s.activate_new(&release("site", 5, T2)).unwrap();
    assert_eq!(s.floor("site").unwrap(), Some(5));
    assert_eq!(s.active().unwrap(), Some(("site".into(), 5)));
    s.activate("site", 3).unwrap();
    assert_eq!(s.active().unwrap(), Some(("site".into(), 3)));
    assert_eq!(s.floor("site").unwrap(), Some(5), "a rollback does not lower the floor");
    // A downgrade accepted by override is recorded and active, and the floor stays.
    s.activate_new(&release("site", 2, T3)).unwrap();
    assert_eq!(s.active().unwrap(), Some(("site".into(), 2)));
    assert_eq!(s.floor("site").unwrap(), Some(5));
    assert_eq!(s.floor("other").unwrap(), None, "floors are per bundle name");
}

pub(crate) fn the_active_pointer_names_a_stored_release(s: &mut dyn Store) {
    let not_found = |e: StoreError| matches!(e, StoreError::NotFound { what: "release", .. });
    assert!(not_found(s.activate("site", 1).unwrap_err()));
    assert_eq!(s.active().unwrap(), None);
    s.activate_new(&release("site", 3, T1)).unwrap();
    s.activate_new(&release("site", 5, T2)).unwrap();
    assert!(not_found(s.activate("site", 9).unwrap_err()));
    assert!(not_found(s.activate("elsewhere", 5).unwrap_err()));
    assert_eq!(
        s.active().unwrap(),
        Some(("site".into(), 5)),
        "a refused activation changes nothing"
    );
    let e = s.forget("site", 5).unwrap_err();
    assert!(matches!(&e, StoreError::ActiveRelease { name, sequence: 5 } if name == "site"), "{e}");
    assert_eq!(s.releases().unwrap().len(), 2, "the active release stays");
    s.forget("site", 3).unwrap();
    assert!(
        not_found(s.activate("site", 3).unwrap_err()),
        "a forgotten release cannot be activated"
    );
    s.forget("site", 3).unwrap();
    let left: Vec<u64> = s.releases().unwrap().iter().map(|r| r.sequence).collect();
    assert_eq!(left, [5]);
    assert_eq!(s.active().unwrap(), Some(("site".into(), 5)));
}

pub(crate) fn releases_read_back_as_recorded(s: &mut dyn Store) {
    let (a, b, c) = (release("site", 9, T3), release("site", 4, T1), release("lab", 1, T2));
    for r in [&a, &b, &c] {
        s.activate_new(r).unwrap();
    }
    assert_eq!(s.releases().unwrap(), [b.clone(), c, a], "oldest import first");
    // An import of a stored release again (a crash between commit and cleanup) replaces it.
    let again = ReleaseRecord { imported_at: T4.into(), ..b.clone() };
    s.activate_new(&again).unwrap();
    assert_eq!(s.releases().unwrap().last(), Some(&again));
    assert_eq!(s.releases().unwrap().len(), 3);
    // Beyond the integers every backend stores: refused, nothing recorded.
    let e = s.activate_new(&release("site", u64::MAX, T5)).unwrap_err();
    assert!(matches!(e, StoreError::OutOfRange { value: u64::MAX, .. }), "{e}");
    assert_eq!(s.active().unwrap(), Some(("site".into(), 4)));
    assert_eq!(s.floor("site").unwrap(), Some(9));
}

pub(crate) fn enrollment_tokens_check_until_revoked(s: &mut dyn Store) {
    let first = token("t1", "linux");
    s.create_enrollment_token(&first).unwrap();
    let secret =
        || TokenSecret { secret_sha256: first.secret_sha256.clone(), policy_id: "linux".into() };
    assert_eq!(s.enrollment_secret("t1").unwrap(), Some(secret()));
    assert_eq!(s.enrollment_secret("t2").unwrap(), None);
    // An id used twice is refused and the first token stays as it was.
    let e = s.create_enrollment_token(&NewEnrollmentToken {
        policy_id: "windows".into(),
        ..token("t1", "x")
    });
    assert!(
        matches!(&e, Err(StoreError::Conflict { what: "enrollment token", key }) if key == "t1"),
        "{e:?}"
    );
    assert_eq!(s.enrollment_secret("t1").unwrap(), Some(secret()));
    let listed = s.enrollment_tokens().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].id.as_str(), listed[0].policy_id.as_str(), listed[0].name.as_deref()),
        ("t1", "linux", Some("web servers"))
    );
    assert_eq!((listed[0].created.as_str(), listed[0].revoked), (T1, false));
    assert!(s.revoke_enrollment_token("t1").unwrap());
    assert!(!s.revoke_enrollment_token("nope").unwrap());
    assert_eq!(s.enrollment_secret("t1").unwrap(), None, "a revoked token enrolls nothing");
    assert!(s.enrollment_tokens().unwrap()[0].revoked, "and is still listed");
}

pub(crate) fn credential_ids_are_live_keys_and_tokens(s: &mut dyn Store) {
    s.create_enrollment_token(&token("t1", "p")).unwrap();
    s.create_enrollment_token(&token("t2", "p")).unwrap();
    s.revoke_enrollment_token("t2").unwrap();
    enroll(s, "a", "ka");
    enroll(s, "b", "kb");
    s.deactivate_agent("b", T2).unwrap();
    let mut ids = s.credential_ids().unwrap();
    ids.sort();
    assert_eq!(ids, ["ka", "t1"]);
}

pub(crate) fn enrollment_is_decided_where_it_is_written(s: &mut dyn Store) {
    enroll(s, "a", "ka");
    // What a caller looked up before proves nothing: the store decides again, and a refused
    // enrollment changes nothing.
    let refused = Enrollment::NotReplaceable;
    assert_eq!(s.enroll_agent(&agent("a", "ka2"), None).unwrap(), refused);
    assert_eq!(s.enroll_agent(&agent("a", "ka2"), Some("other")).unwrap(), refused);
    assert_eq!(s.agent("a").unwrap().unwrap().access_key_id, "ka");
    assert_eq!(s.agent_by_access_key("ka2").unwrap(), None);
    // The enrollment that proved it holds the agent's key replaces the agent, and its
    // credential: the old key finds nothing any more.
    let replacement = AgentRecord { version: "9.2.2".into(), ..agent("a", "ka2") };
    assert_eq!(s.enroll_agent(&replacement, Some("ka")).unwrap(), Enrollment::Stored);
    assert_eq!(s.agent("a").unwrap(), Some(replacement.clone()));
    assert_eq!(s.agent_by_access_key("ka2").unwrap(), Some(AgentKey::from(&replacement)));
    assert_eq!(s.agent_by_access_key("ka").unwrap(), None);
    // An inactive agent is replaced without proof.
    s.record_action_results("a", &[], true, T2).unwrap();
    assert_eq!(s.enroll_agent(&agent("a", "ka3"), None).unwrap(), Enrollment::Stored);
    assert!(s.agent("a").unwrap().unwrap().active);
}

pub(crate) fn a_new_agent_starts_after_every_action(s: &mut dyn Store) {
    enroll(s, "a", "ka");
    let x0 = s.create_action(&action("x0", &["a"], FAR, ActionEffect::None)).unwrap();
    s.policy_revision("p", "c1", T1).unwrap();
    s.record_policy_acks(&[PolicyAck {
        agent_id: "a".into(),
        access_key_id: "ka".into(),
        policy_id: "p".into(),
        revision: 1,
    }])
    .unwrap();
    assert_eq!(s.agent_policy_revision("a").unwrap(), 1);
    enroll(s, "b", "kb");
    s.create_action(&action("both", &["a", "b"], FAR, ActionEffect::None)).unwrap();
    assert_eq!(pending_ids(s, "b", 0), ["both"], "b never sees what was queued before it");
    // The replacement of an agent starts after every action too, whatever cursor it shows,
    // and runs none of its policy's revisions.
    assert_eq!(s.enroll_agent(&agent("a", "ka2"), Some("ka")).unwrap(), Enrollment::Stored);
    assert_eq!(s.agent_action("a", "x0").unwrap(), None);
    assert!(pending_ids(s, "a", 0).is_empty());
    assert!(s.action_cursor("a").unwrap() > x0);
    assert_eq!(s.agent_policy_revision("a").unwrap(), 0);
}

pub(crate) fn revocation_tombstones_the_id(s: &mut dyn Store) {
    enroll(s, "a", "ka");
    enroll(s, "b", "kb");
    assert!(s.deactivate_agent("b", T2).unwrap());
    assert!(!s.deactivate_agent("b", T3).unwrap(), "once");
    assert!(!s.deactivate_agent("nobody", T3).unwrap());
    assert_eq!(s.revoked_at("b").unwrap().as_deref(), Some(T2));
    assert_eq!(s.revoked_at("a").unwrap(), None);
    let b = s.agent_by_access_key("kb").unwrap().unwrap();
    assert!(!b.active, "the key finds an inactive agent");
    assert_eq!(s.agent_view("b").unwrap().unwrap().unenrolled_at.as_deref(), Some(T2));
    // A revoked id never enrolls again, even as the agent it replaces.
    assert_eq!(s.enroll_agent(&agent("b", "kb2"), None).unwrap(), Enrollment::Revoked);
    assert_eq!(s.enroll_agent(&agent("b", "kb2"), Some("kb")).unwrap(), Enrollment::Revoked);
    // An agent unenrolled by its acknowledged UNENROLL is not tombstoned: Fleet Server
    // deletes an inactive agent's record when its id enrolls again, and so does the appliance.
    enroll(s, "c", "kc");
    s.record_action_results("c", &[], true, T3).unwrap();
    assert!(!s.agent("c").unwrap().unwrap().active);
    assert_eq!(s.revoked_at("c").unwrap(), None);
    enroll(s, "c", "kc2");
}

pub(crate) fn parked_agents_are_touched_and_inactive_ones_are_not(s: &mut dyn Store) {
    enroll(s, "a", "ka");
    enroll(s, "b", "kb");
    s.deactivate_agent("b", T2).unwrap();
    s.touch_agents(&["a".into(), "b".into(), "nobody".into()], NOW).unwrap();
    let seen = |s: &dyn Store, id| s.agent_view(id).unwrap().unwrap().last_checkin;
    assert_eq!(seen(s, "a").as_deref(), Some(NOW));
    assert_eq!(seen(s, "b"), None);
}

pub(crate) fn check_in_reports_are_written_for_the_key_they_came_with(s: &mut dyn Store) {
    enroll(s, "a", "ka");
    let full = CheckinUpdate {
        status: "DEGRADED".into(),
        message: "1 unit failing".into(),
        version: "9.1.3".into(),
        local_metadata: Some(r#"{"host":{"hostname":"web-01"}}"#.into()),
        components: Some(r#"[{"id":"filestream-default"}]"#.into()),
        ..report("a", "ka")
    };
    // A report of an unknown agent is dropped, and the batch goes on.
    s.record_checkins(&[report("nobody", "kn"), full], &unchanged).unwrap();
    let view = s.agent_view("a").unwrap().unwrap();
    assert_eq!(view.last_checkin.as_deref(), Some(NOW));
    assert_eq!(
        (view.last_status.as_deref(), view.last_message.as_deref()),
        (Some("DEGRADED"), Some("1 unit failing"))
    );
    assert_eq!((view.version.as_str(), view.hostname.as_str()), ("9.1.3", "web-01"));
    assert_eq!(view.components[0]["id"], "filestream-default");
    // A report without metadata or components keeps the stored ones.
    s.record_checkins(&[report("a", "ka")], &unchanged).unwrap();
    let view = s.agent_view("a").unwrap().unwrap();
    assert_eq!((view.hostname.as_str(), view.last_status.as_deref()), ("web-01", Some("online")));
    assert!(view.components.is_array());
    // A report that came with the key of the agent this one replaced is not its report.
    assert_eq!(s.enroll_agent(&agent("a", "ka2"), Some("ka")).unwrap(), Enrollment::Stored);
    s.record_checkins(&[CheckinUpdate { status: "error".into(), ..report("a", "ka") }], &unchanged)
        .unwrap();
    assert_eq!(s.agent_view("a").unwrap().unwrap().last_status, None);
}

pub(crate) fn check_ins_apply_the_upgrade_rule(s: &mut dyn Store) {
    enroll(s, "a", "ka");
    let upgrade = ActionEffect::Upgrade { version: "9.2.2".into(), state: "REQUESTED".into() };
    s.create_action(&NewAction { kind: "UPGRADE".into(), ..action("up", &["a"], FAR, upgrade) })
        .unwrap();
    let view = s.agent_view("a").unwrap().unwrap();
    assert_eq!(
        (view.upgrade_state.as_deref(), view.upgrade_target.as_deref()),
        (Some("REQUESTED"), Some("9.2.2"))
    );
    // The rule sees what is stored and decides; the store writes what it decided.
    let seen = Mutex::new(Vec::new());
    let rule = |stored: &StoredUpgrade, report: &CheckinUpdate| {
        seen.lock().unwrap().push(stored.clone());
        UpgradeStep {
            state: Some(report.status.clone()),
            completed: report.status == "DONE" && stored.state.as_deref() != Some("DONE"),
        }
    };
    let step = |status: &str, details: Option<&str>, at: &str| CheckinUpdate {
        status: status.into(),
        upgrade_details: details.map(str::to_owned),
        at: at.into(),
        ..report("a", "ka")
    };
    s.record_checkins(&[step("WORKING", Some(r#"{"state":"UPG_DOWNLOADING"}"#), T2)], &rule)
        .unwrap();
    let view = s.agent_view("a").unwrap().unwrap();
    assert_eq!((view.upgrade_state.as_deref(), view.upgraded_at), (Some("WORKING"), None));
    assert_eq!(view.upgrade_details["state"], "UPG_DOWNLOADING");
    s.record_checkins(&[step("DONE", None, T3)], &rule).unwrap();
    s.record_checkins(&[step("DONE", None, T4)], &rule).unwrap();
    let view = s.agent_view("a").unwrap().unwrap();
    assert_eq!(view.upgrade_state.as_deref(), Some("DONE"));
    assert_eq!(view.upgraded_at.as_deref(), Some(T3), "the time the upgrade completed stays");
    assert!(view.upgrade_details.is_null(), "details are stored as reported, also when gone");
    let stored = |details, state: &str| StoredUpgrade {
        details,
        state: Some(state.into()),
        target: Some("9.2.2".into()),
    };
    assert_eq!(
        *seen.lock().unwrap(),
        [stored(false, "REQUESTED"), stored(true, "WORKING"), stored(false, "DONE")]
    );
}

pub(crate) fn audit_annotations_last_until_the_next_report(s: &mut dyn Store) {
    enroll(s, "a", "ka");
    let reason = |s: &dyn Store| s.agent_view("a").unwrap().unwrap().audit_unenroll_reason;
    assert_eq!(s.audit_unenroll("a", "uninstall", T1, "orphaned").unwrap(), AuditOutcome::Recorded);
    assert_eq!(reason(s).as_deref(), Some("uninstall"));
    assert_eq!(s.audit_unenroll("a", "orphaned", T2, "orphaned").unwrap(), AuditOutcome::Recorded);
    // The final reason stays.
    assert_eq!(s.audit_unenroll("a", "uninstall", T3, "orphaned").unwrap(), AuditOutcome::Conflict);
    assert_eq!(reason(s).as_deref(), Some("orphaned"));
    s.record_checkins(&[report("a", "ka")], &unchanged).unwrap();
    assert_eq!(reason(s), None, "a check-in ends the annotation");
    assert_eq!(s.audit_unenroll("a", "uninstall", T4, "orphaned").unwrap(), AuditOutcome::Recorded);
}

pub(crate) fn agent_views_page_in_enrollment_order(s: &mut dyn Store) {
    for (id, at, policy) in [("a2", T2, "p"), ("b1", T1, "q"), ("a1", T2, "p"), ("a3", T1, "p")] {
        let record = AgentRecord {
            enrolled_at: at.into(),
            policy_id: policy.into(),
            ..agent(id, &format!("k{id}"))
        };
        assert_eq!(s.enroll_agent(&record, None).unwrap(), Enrollment::Stored);
    }
    let page = |policy: Option<&str>, after: Option<&str>, limit| AgentPage {
        policy: policy.map(str::to_owned),
        after: after.map(str::to_owned),
        limit,
        summary: false,
    };
    let all = s.agent_views(&AgentPage::default()).unwrap();
    assert_eq!(ids(&all), ["a3", "b1", "a1", "a2"], "by enrollment time, then id");
    let first = s.agent_views(&page(None, None, Some(3))).unwrap();
    assert_eq!(ids(&first), ["a3", "b1", "a1"]);
    let rest = s.agent_views(&page(None, Some("a1"), Some(3))).unwrap();
    assert_eq!(ids(&rest), ["a2"]);
    assert!(s.agent_views(&page(None, Some("a2"), Some(3))).unwrap().is_empty());
    assert!(s.agent_views(&page(None, None, Some(0))).unwrap().is_empty());
    let p = s.agent_views(&page(Some("p"), Some("a3"), None)).unwrap();
    assert_eq!(ids(&p), ["a1", "a2"]);
    assert!(s.agent_views(&page(Some("none"), None, None)).unwrap().is_empty());
    // A page starts after an agent of the list it pages, or nowhere.
    for (policy, after) in [(Some("p"), "b1"), (None, "nobody")] {
        let e = s.agent_views(&page(policy, Some(after), None)).unwrap_err();
        assert!(matches!(&e, StoreError::NotFound { what: "agent", key } if key == after), "{e}");
    }
    assert_eq!(s.agent_view("a1").unwrap().as_ref(), all.get(2));
    // A summary is the same list with nothing an agent sent as JSON parsed.
    assert_eq!(all[0].tags, serde_json::json!([]), "a full view parses what the agent sent");
    let summary = s.agent_views(&AgentPage::summary()).unwrap();
    let stripped: Vec<super::AgentView> = all
        .iter()
        .map(|v| super::AgentView {
            hostname: String::new(),
            tags: serde_json::Value::Null,
            local_metadata: serde_json::Value::Null,
            components: serde_json::Value::Null,
            upgrade_details: serde_json::Value::Null,
            ..v.clone()
        })
        .collect();
    assert_eq!(summary, stripped);
    assert_eq!(s.agent_view("nobody").unwrap(), None);
}

pub(crate) fn agents_in_policy_are_the_active_ones(s: &mut dyn Store) {
    enroll(s, "b", "kb");
    enroll(s, "a", "ka");
    enroll(s, "d", "kd");
    let elsewhere = AgentRecord { policy_id: "q".into(), ..agent("c", "kc") };
    assert_eq!(s.enroll_agent(&elsewhere, None).unwrap(), Enrollment::Stored);
    s.deactivate_agent("d", T2).unwrap();
    assert_eq!(s.agents_in_policy("p").unwrap(), ["a", "b"]);
    let reassign = ActionEffect::Reassign { policy_id: "p".into() };
    s.create_action(&action("move", &["c"], FAR, reassign)).unwrap();
    assert_eq!(s.agents_in_policy("p").unwrap(), ["a", "b", "c"]);
    assert!(s.agents_in_policy("q").unwrap().is_empty());
}

pub(crate) fn policy_revisions_only_go_up(s: &mut dyn Store) {
    assert_eq!(s.policy_revision("p", "aaa", T1).unwrap(), (1, T1.to_owned()));
    assert_eq!(
        s.policy_revision("p", "aaa", T2).unwrap(),
        (1, T1.to_owned()),
        "same content, same revision"
    );
    assert_eq!(s.policy_revision("p", "bbb", T3).unwrap(), (2, T3.to_owned()));
    assert_eq!(
        s.policy_revision("p", "aaa", T4).unwrap().0,
        3,
        "going back to old content is a new revision"
    );
    assert_eq!(s.policy_revision("q", "aaa", T5).unwrap().0, 1, "revisions are per policy");
}

pub(crate) fn running_revisions_never_go_back_nor_past_what_was_issued(s: &mut dyn Store) {
    for content in ["a", "b", "c"] {
        s.policy_revision("p", content, T1).unwrap();
    }
    enroll(s, "a", "ka");
    let ack = |key: &str, policy: &str, revision| PolicyAck {
        agent_id: "a".into(),
        access_key_id: key.into(),
        policy_id: policy.into(),
        revision,
    };
    let revision = |s: &dyn Store| s.agent_policy_revision("a").unwrap();
    s.record_policy_acks(&[ack("ka", "p", 2)]).unwrap();
    assert_eq!(revision(s), 2);
    s.record_policy_acks(&[ack("other", "p", 3), ack("ka", "q", 3), ack("ka", "p", 1)]).unwrap();
    assert_eq!(revision(s), 2, "another key, another policy, an older revision: no change");
    s.record_policy_acks(&[ack("ka", "p", u64::MAX)]).unwrap();
    assert_eq!(revision(s), 3, "never past the latest revision issued");
    // Check-in reports follow the same rules.
    let running = |policy: &str, revision| CheckinUpdate {
        running: Some((policy.into(), revision)),
        ..report("a", "ka")
    };
    s.record_checkins(&[running("p", 1), running("q", 5)], &unchanged).unwrap();
    assert_eq!(revision(s), 3);
    // Reassigned, the agent runs none of its new policy's revisions yet.
    s.policy_revision("q", "z", T2).unwrap();
    let reassign = ActionEffect::Reassign { policy_id: "q".into() };
    s.create_action(&action("move", &["a"], FAR, reassign)).unwrap();
    assert_eq!(revision(s), 0);
    s.record_policy_acks(&[ack("ka", "p", 3)]).unwrap();
    assert_eq!(revision(s), 0, "an ack of the old policy counts for nothing");
    s.record_checkins(&[running("q", 7)], &unchanged).unwrap();
    assert_eq!(revision(s), 1);
    assert_eq!(s.agent_policy_revision("nobody").unwrap(), 0);
}

pub(crate) fn actions_are_delivered_in_order_within_their_limits(s: &mut dyn Store) {
    enroll(s, "a", "ka");
    enroll(s, "b", "kb");
    for i in 0..150 {
        s.create_action(&action(&format!("x{i}"), &["a"], FAR, ActionEffect::None)).unwrap();
    }
    s.create_action(&action("expired", &["a", "b"], T5, ActionEffect::None)).unwrap();
    s.create_action(&action("for-b", &["b"], FAR, ActionEffect::None)).unwrap();
    let first = s.pending_actions("a", 0, NOW, 100).unwrap();
    assert_eq!(first.len(), 100, "bounded per response");
    assert_eq!(first[0].id, "x0");
    assert_eq!(first[0], s.action("x0").unwrap().unwrap());
    assert!(first.windows(2).all(|w| w[0].seq < w[1].seq), "creation order");
    let cursor = s.agent_action("a", "x99").unwrap().unwrap().seq;
    assert_eq!(cursor, first[99].seq);
    let rest = s.pending_actions("a", cursor, NOW, 100).unwrap();
    assert_eq!(rest.len(), 50, "the expired action is not delivered");
    assert_eq!(s.pending_actions("a", 0, T4, 1000).unwrap().len(), 151, "before it expired, it is");
    assert_eq!(s.agent_action("a", "for-b").unwrap(), None, "another agent's action");
    assert_eq!(s.agent_action("a", "nope").unwrap(), None);
    assert_eq!(s.action("nope").unwrap(), None);
    assert!(s.pending_actions("nobody", 0, NOW, 100).unwrap().is_empty());
}

pub(crate) fn action_cursors_never_go_back(s: &mut dyn Store) {
    enroll(s, "a", "ka");
    let mut seqs = Vec::new();
    for i in 0..3 {
        seqs.push(
            s.create_action(&action(&format!("x{i}"), &["a"], FAR, ActionEffect::None)).unwrap(),
        );
    }
    assert_eq!(s.action_cursor("a").unwrap(), 0);
    let at = |cursor| CheckinUpdate { cursor, ..report("a", "ka") };
    s.record_checkins(&[at(Some(seqs[1]))], &unchanged).unwrap();
    assert_eq!(s.action_cursor("a").unwrap(), seqs[1]);
    s.record_checkins(&[at(Some(seqs[0])), at(None)], &unchanged).unwrap();
    assert_eq!(s.action_cursor("a").unwrap(), seqs[1], "an older ack_token moves nothing back");
    assert_eq!(pending_ids(s, "a", s.action_cursor("a").unwrap()), ["x2"]);
    assert_eq!(s.action_cursor("nobody").unwrap(), 0);
}

pub(crate) fn a_cancel_hides_its_target_from_the_agents_it_names(s: &mut dyn Store) {
    enroll(s, "a", "ka");
    enroll(s, "b", "kb");
    s.create_action(&action("for-b", &["b"], FAR, ActionEffect::None)).unwrap();
    let cancel = |target: &str, upgrade_state: Option<&str>| ActionEffect::Cancel {
        target_id: target.into(),
        upgrade_state: upgrade_state.map(str::to_owned),
    };
    s.create_action(&action("c", &["b"], FAR, cancel("for-b", None))).unwrap();
    assert_eq!(pending_ids(s, "b", 0), ["c"]);
    assert!(s.action_targets("for-b").unwrap()[0].cancelled);
    assert!(!s.action_targets("c").unwrap()[0].cancelled);
    // A cancel for some agents leaves the others' delivery alone.
    s.create_action(&action("both", &["a", "b"], FAR, ActionEffect::None)).unwrap();
    s.create_action(&action("c2", &["b"], FAR, cancel("both", None))).unwrap();
    assert_eq!(pending_ids(s, "a", 0), ["both"]);
    assert_eq!(pending_ids(s, "b", 0), ["c", "c2"]);
    // Cancelling an upgrade resets the upgrade of the agents named, to the state given.
    let upgrade = ActionEffect::Upgrade { version: "9.2.2".into(), state: "REQUESTED".into() };
    s.create_action(&action("up", &["a", "b"], FAR, upgrade)).unwrap();
    s.record_checkins(
        &[CheckinUpdate { upgrade_details: Some("{}".into()), ..report("b", "kb") }],
        &unchanged,
    )
    .unwrap();
    s.create_action(&action("c3", &["b"], FAR, cancel("up", Some("CANCELLED")))).unwrap();
    let upgrade_of = |s: &dyn Store, id| {
        let v = s.agent_view(id).unwrap().unwrap();
        (v.upgrade_state, v.upgrade_target, v.upgrade_details.is_null())
    };
    assert_eq!(upgrade_of(s, "b"), (Some("CANCELLED".into()), None, true));
    assert_eq!(upgrade_of(s, "a"), (Some("REQUESTED".into()), Some("9.2.2".into()), true));
    // Without a state, the upgrade fields stay.
    s.create_action(&action("c4", &["a"], FAR, cancel("up", None))).unwrap();
    assert_eq!(upgrade_of(s, "a"), (Some("REQUESTED".into()), Some("9.2.2".into()), true));
    assert_eq!(pending_ids(s, "a", 0), ["both", "c4"]);
}

pub(crate) fn action_ids_are_unique(s: &mut dyn Store) {
    enroll(s, "a", "ka");
    s.create_action(&action("x", &["a"], FAR, ActionEffect::None)).unwrap();
    let twice =
        NewAction { kind: "UNENROLL".into(), ..action("x", &["a"], FAR, ActionEffect::None) };
    let e = s.create_action(&twice).unwrap_err();
    assert!(matches!(&e, StoreError::Conflict { what: "action", key } if key == "x"), "{e}");
    assert_eq!(s.action("x").unwrap().unwrap().kind, "SETTINGS");
    assert_eq!(pending_ids(s, "a", 0), ["x"]);
}

pub(crate) fn acknowledgements_are_recorded_per_agent(s: &mut dyn Store) {
    enroll(s, "b", "kb");
    enroll(s, "a", "ka");
    s.create_action(&action("x", &["b", "a"], FAR, ActionEffect::None)).unwrap();
    let target = |agent: &str, ack: Option<Option<&str>>| ActionTarget {
        agent_id: agent.into(),
        ack: ack.map(|error| error.map(str::to_owned)),
        cancelled: false,
    };
    assert_eq!(s.action_targets("x").unwrap(), [target("a", None), target("b", None)]);
    let ok = ActionResult { action_id: "x".into(), error: None, data: Some("{}".into()) };
    s.record_action_results("a", std::slice::from_ref(&ok), false, T2).unwrap();
    assert_eq!(s.action_targets("x").unwrap(), [target("a", Some(None)), target("b", None)]);
    // A later ack of the same action replaces the earlier one.
    let failed = ActionResult { error: Some("disk full".into()), ..ok };
    s.record_action_results("a", &[failed], false, T3).unwrap();
    assert_eq!(s.action_targets("x").unwrap()[0], target("a", Some(Some("disk full"))));
    assert!(s.agent("a").unwrap().unwrap().active);
    assert!(s.action_targets("nope").unwrap().is_empty());
}

pub(crate) fn recent_actions_of_a_kind_come_newest_first(s: &mut dyn Store) {
    enroll(s, "a", "ka");
    let upgrade = |id: &str| NewAction {
        kind: "UPGRADE".into(),
        ..action(id, &["a"], FAR, ActionEffect::None)
    };
    s.create_action(&upgrade("u1")).unwrap();
    s.create_action(&action("s1", &["a"], FAR, ActionEffect::None)).unwrap();
    s.create_action(&upgrade("u2")).unwrap();
    s.create_action(&upgrade("u3")).unwrap();
    let ids = |kind, limit| -> Vec<String> {
        s.recent_actions(kind, limit).unwrap().into_iter().map(|a| a.id).collect()
    };
    assert_eq!(ids("UPGRADE", 10), ["u3", "u2", "u1"]);
    assert_eq!(ids("UPGRADE", 2), ["u3", "u2"]);
    assert_eq!(ids("SETTINGS", 10), ["s1"]);
    assert!(ids("UNENROLL", 10).is_empty());
    assert_eq!(s.recent_actions("UPGRADE", 1).unwrap()[0], s.action("u3").unwrap().unwrap());
}

pub(crate) fn uploads_go_from_awaiting_to_ready_or_error(s: &mut dyn Store) {
    let upload = |id: &str, agent: &str, created: &str| UploadRecord {
        id: id.into(),
        action_id: "diag".into(),
        agent_id: agent.into(),
        name: "diagnostics.zip".into(),
        mime_type: "application/zip".into(),
        size: 5 << 20,
        chunk_size: 4 << 20,
        status: UploadStatus::Awaiting,
        created: created.into(),
        completed: None,
        sha256: None,
    };
    let u1 = upload("u1", "a", T1);
    s.create_upload(&u1).unwrap();
    assert_eq!(s.upload("u1").unwrap(), Some(u1.clone()));
    let e = s.create_upload(&upload("u1", "b", T2)).unwrap_err();
    assert!(matches!(&e, StoreError::Conflict { what: "upload", key } if key == "u1"), "{e}");
    let chunk = |num, sha: &str| ChunkRecord { num, size: 10, sha256: sha.into() };
    s.put_chunk("u1", &chunk(1, "11")).unwrap();
    s.put_chunk("u1", &chunk(0, "00")).unwrap();
    s.put_chunk("u1", &chunk(0, "01")).unwrap();
    assert_eq!(
        s.chunks("u1").unwrap(),
        [chunk(0, "01"), chunk(1, "11")],
        "by number, the newer counts"
    );
    s.finish_upload("u1", UploadStatus::Ready, Some("feed"), T2).unwrap();
    let done = s.upload("u1").unwrap().unwrap();
    assert_eq!(
        (done.status, done.sha256.as_deref(), done.completed.as_deref()),
        (UploadStatus::Ready, Some("feed"), Some(T2))
    );
    assert!(s.chunks("u1").unwrap().is_empty(), "finishing forgets the chunks");
    // A newer attempt is the one found for the action; uploads open too long are closed.
    s.create_upload(&upload("u2", "a", T3)).unwrap();
    s.create_upload(&upload("u3", "b", T3)).unwrap();
    s.create_upload(&upload("u4", "a", T5)).unwrap();
    s.put_chunk("u2", &chunk(0, "00")).unwrap();
    assert_eq!(s.upload_for_action("diag", "a").unwrap().unwrap().id, "u4");
    assert_eq!(s.upload_for_action("diag", "c").unwrap(), None);
    let expired = s.expire_uploads(T4, NOW).unwrap();
    let mut expired_ids: Vec<&str> = expired.iter().map(|u| u.id.as_str()).collect();
    expired_ids.sort_unstable();
    assert_eq!(expired_ids, ["u2", "u3"], "open and older than the cutoff");
    assert!(expired.iter().all(|u| u.status == UploadStatus::Awaiting), "as they were");
    let status = |s: &dyn Store, id| {
        let u = s.upload(id).unwrap().unwrap();
        (u.status, u.completed)
    };
    assert_eq!(status(s, "u2"), (UploadStatus::Failed, Some(NOW.to_owned())));
    assert!(s.chunks("u2").unwrap().is_empty());
    assert_eq!(status(s, "u1"), (UploadStatus::Ready, Some(T2.to_owned())), "a finished one stays");
    assert_eq!(status(s, "u4"), (UploadStatus::Awaiting, None));
    let all: Vec<String> = s.uploads().unwrap().into_iter().map(|u| u.id).collect();
    assert_eq!(all, ["u1", "u2", "u3", "u4"], "oldest first");
    assert_eq!(s.upload("nope").unwrap(), None);
}

pub(crate) fn an_output_key_goes_from_intent_to_active_and_replaces_the_old_one(s: &mut dyn Store) {
    assert!(matches!(
        s.begin_output_key("a1", "default", "h1", "i-a1-default", ("p", 1), T1),
        Err(StoreError::NotFound { .. })
    ));
    enroll(s, "a1", "k1");
    let first = s.begin_output_key("a1", "default", "h1", "i-a1-default", ("p", 1), T1).unwrap();
    // One creation at a time per output: a second must reconcile the first.
    assert!(matches!(
        s.begin_output_key("a1", "default", "h1", "i-a1-default", ("p", 1), T1),
        Err(StoreError::Conflict { .. })
    ));
    assert!(s.finish_output_key(first, "id1", "id1:secret1").unwrap());
    let keys = s.output_keys("a1").unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(
        (keys[0].state, keys[0].api_key.as_deref()),
        (KeyState::Active, Some("id1:secret1"))
    );
    // New permissions: the old key retires at the revision that brings the new one.
    let second = s.begin_output_key("a1", "default", "h2", "i-a1-default", ("p", 4), T2).unwrap();
    assert!(s.finish_output_key(second, "id2", "id2:secret2").unwrap());
    let keys = s.output_keys("a1").unwrap();
    let states: Vec<_> = keys.iter().map(|k| (k.key_id.as_deref(), k.state, k.retire_at)).collect();
    assert_eq!(
        states,
        [(Some("id1"), KeyState::Retiring, Some(4)), (Some("id2"), KeyState::Active, None)]
    );
    // An output the policy no longer has retires too; one it keeps does not.
    assert_eq!(s.retire_output_keys("a1", &["default".into()], ("p", 5)).unwrap(), 0);
    assert_eq!(s.retire_output_keys("a1", &[], ("p", 5)).unwrap(), 1);
    // Done with once the agent runs that revision, or any revision of another policy.
    let retired = s.output_keys("a1").unwrap().pop().unwrap();
    assert!(!retired.retired_by("p", 4) && retired.retired_by("p", 5));
    assert!(retired.retired_by("q", 1), "revisions count per policy: the agent moved");
    assert_eq!(s.output_keys_in(&[KeyState::Retiring]).unwrap().len(), 2);
    s.drop_output_keys(&[keys[0].row]).unwrap();
    s.forget_output_key(keys[0].row).unwrap();
    assert_eq!(s.output_keys("a1").unwrap().len(), 1);
}

pub(crate) fn output_keys_die_with_their_agent(s: &mut dyn Store) {
    enroll(s, "a1", "k1");
    let made = s.begin_output_key("a1", "default", "h", "i-a1-default", ("p", 1), T1).unwrap();
    assert!(s.finish_output_key(made, "id1", "id1:s").unwrap());
    let pending = s.begin_output_key("a1", "other", "h", "i-a1-other", ("p", 1), T1).unwrap();
    assert!(s.deactivate_agent("a1", T2).unwrap());
    let states: Vec<_> = s.output_keys("a1").unwrap().iter().map(|k| k.state).collect();
    assert_eq!(states, [KeyState::Invalidating, KeyState::Invalidating]);
    // A key finished after its agent went stays marked, its id kept for the invalidation.
    assert!(!s.finish_output_key(pending, "id2", "id2:s").unwrap());
    let keys = s.output_keys("a1").unwrap();
    assert_eq!((keys[1].state, keys[1].key_id.as_deref()), (KeyState::Invalidating, Some("id2")));
    // A replacing enrollment drops the keys of the agent it replaces.
    enroll(s, "b1", "k2");
    let b = s.begin_output_key("b1", "default", "h", "i-b1-default", ("p", 1), T1).unwrap();
    assert!(s.finish_output_key(b, "id3", "id3:s").unwrap());
    assert_eq!(s.enroll_agent(&agent("b1", "k3"), Some("k2")).unwrap(), Enrollment::Stored);
    assert_eq!(s.output_keys("b1").unwrap()[0].state, KeyState::Invalidating);
    // So does an acknowledged UNENROLL.
    enroll(s, "c1", "k4");
    let c = s.begin_output_key("c1", "default", "h", "i-c1-default", ("p", 1), T1).unwrap();
    assert!(s.finish_output_key(c, "id4", "id4:s").unwrap());
    s.record_action_results("c1", &[], true, T3).unwrap();
    assert_eq!(s.output_keys("c1").unwrap()[0].state, KeyState::Invalidating);
}

fn secret(id: &str, sealed: &[u8], set_at: &str) -> SecretRecord {
    SecretRecord { id: id.into(), sealed: sealed.to_vec(), set_at: set_at.into() }
}

pub(crate) fn secrets_are_kept_sealed_one_per_id_in_id_order(s: &mut dyn Store) {
    assert_eq!(s.secret_records().unwrap(), []);
    // Any bytes: a sealed value holds NULs and invalid UTF-8.
    let sealed: Vec<u8> = (0..=255).collect();
    s.put_secret("tls-key", &sealed, T1).unwrap();
    s.put_secret("db-password", b"\0old", T1).unwrap();
    s.put_secret("Zeta", b"z", T2).unwrap();
    // Setting again replaces the value and its time: still one row.
    s.put_secret("db-password", b"\0new", T3).unwrap();
    assert_eq!(
        s.secret_records().unwrap(),
        [
            secret("Zeta", b"z", T2),
            secret("db-password", b"\0new", T3),
            secret("tls-key", &sealed, T1)
        ],
        "by id (bytewise), one per id, as put"
    );
}

pub(crate) fn removing_a_secret_says_whether_there_was_one(s: &mut dyn Store) {
    s.put_secret("a", b"1", T1).unwrap();
    s.put_secret("b", b"2", T1).unwrap();
    assert!(s.remove_secret("a").unwrap());
    assert!(!s.remove_secret("a").unwrap(), "gone already");
    assert!(!s.remove_secret("never").unwrap());
    assert_eq!(s.secret_records().unwrap(), [secret("b", b"2", T1)]);
    // Set again after a removal: back, with its new time.
    s.put_secret("a", b"3", T2).unwrap();
    assert_eq!(s.secret_records().unwrap(), [secret("a", b"3", T2), secret("b", b"2", T1)]);
}
