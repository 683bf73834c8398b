//! The rules alone, on hand-made balancer reports.

use super::*;
use crate::observed::{Check, Server, ServerCounters};

fn key(server: &str) -> ServerKey {
    ("kf_prod_api".to_owned(), server.to_owned())
}

fn server(weight: u32, admin: Admin, up: bool) -> Server {
    Server {
        admin,
        up,
        check: if up { Check::Passed } else { Check::Failed },
        weight,
        sessions: 0,
        counters: ServerCounters::default(),
        label: if up { "UP" } else { "DOWN" }.into(),
    }
}

/// blue serves at 100; green is enabled at weight 0 and UP (`green_up`) or DOWN.
fn servers(green_up: bool) -> Servers {
    [
        (key("blue"), server(100, Admin::Ready, true)),
        (key("green"), server(0, Admin::Ready, green_up)),
    ]
    .into()
}

#[test]
fn weight_goes_only_to_servers_the_balancer_finds_up() {
    let shift = [(key("green"), 100), (key("blue"), 0)];
    assert_eq!(
        check_weights(&servers(true), &shift, &[key("green")]),
        Ok(false)
    );
    // A target that is DOWN, not ready, or unknown is refused.
    assert_eq!(
        check_weights(
            &servers(false),
            &[(key("green"), 100), (key("blue"), 100)],
            &[key("green")]
        ),
        Err(Refusal::NotUp {
            server: key("green"),
            label: Some("DOWN".into())
        })
    );
    let mut draining = servers(true);
    draining.get_mut(&key("green")).unwrap().admin = Admin::Drain;
    assert!(matches!(
        check_weights(
            &draining,
            &[(key("green"), 50), (key("blue"), 50)],
            &[key("green")]
        ),
        Err(Refusal::NotUp { .. })
    ));
    // UP and ready, but the balancer's own check has no result yet (just out of maintenance).
    let mut unchecked = servers(true);
    unchecked.get_mut(&key("green")).unwrap().check = Check::None;
    assert!(matches!(
        check_weights(
            &unchecked,
            &[(key("green"), 100), (key("blue"), 100)],
            &[key("green")]
        ),
        Err(Refusal::NotUp { .. })
    ));
    assert_eq!(
        check_weights(&unchecked, &[(key("green"), 100)], &[]),
        Err(Refusal::NoServerKeepsWeight)
    );
    assert_eq!(
        check_weights(
            &servers(true),
            &[(key("red"), 100), (key("blue"), 100)],
            &[key("red")]
        ),
        Err(Refusal::NotUp {
            server: key("red"),
            label: None
        })
    );
}

#[test]
fn some_server_that_is_up_always_keeps_weight() {
    // All weight to a DOWN server, none to the one that is UP.
    let err = check_weights(
        &servers(false),
        &[(key("green"), 100), (key("blue"), 0)],
        &[],
    );
    assert_eq!(err, Err(Refusal::NoServerKeepsWeight));
    assert_eq!(
        check_weights(&servers(true), &[(key("blue"), 0)], &[]),
        Err(Refusal::NoServerKeepsWeight)
    );
}

#[test]
fn weights_already_set_need_nothing_sent_and_are_read_back() {
    let same = [(key("blue"), 100), (key("green"), 0)];
    assert_eq!(check_weights(&servers(true), &same, &[]), Ok(true));
    assert_eq!(check_read_back(&servers(true), &same), Ok(()));
    assert_eq!(
        check_read_back(&servers(true), &[(key("green"), 100)]),
        Err(Refusal::WeightNotSet {
            server: key("green"),
            got: Some(0),
            want: 100
        })
    );
    assert!(check_read_back(&servers(true), &[(key("red"), 0)]).is_err());
}

#[test]
fn the_last_server_that_serves_is_never_drained() {
    assert_eq!(
        check_drain(&servers(true), &key("blue")),
        Err(Refusal::LastServer(key("blue")))
    );
    // Another server with weight but DOWN does not count.
    let mut both = servers(false);
    both.get_mut(&key("green")).unwrap().weight = 50;
    assert_eq!(
        check_drain(&both, &key("blue")),
        Err(Refusal::LastServer(key("blue")))
    );
    // With another that is UP and has weight, or for a server without weight, it may.
    both.get_mut(&key("green")).unwrap().up = true;
    both.get_mut(&key("green")).unwrap().check = Check::Passed;
    assert_eq!(check_drain(&both, &key("blue")), Ok(()));
    assert_eq!(check_drain(&servers(true), &key("green")), Ok(()));
    // A server of another backend is not "another server".
    let mut other = servers(true);
    other.insert(
        ("kf_prod_web".to_owned(), "blue".to_owned()),
        server(100, Admin::Ready, true),
    );
    assert!(check_drain(&other, &key("blue")).is_err());
    // One in maintenance takes nothing: draining it is a no-op.
    let mut maint = servers(true);
    maint.get_mut(&key("blue")).unwrap().admin = Admin::Maint;
    assert_eq!(check_drain(&maint, &key("blue")), Ok(()));
}

fn analysis() -> Analysis {
    Analysis {
        max_error_rate: 0.05,
        min_requests: 100,
        checks: vec![],
    }
}

#[test]
fn verdicts() {
    let w = |requests, errors| Window { requests, errors };
    let a = analysis();
    assert_eq!(judge(w(1000, 50), &a, false), Verdict::Passed);
    assert_eq!(judge(w(1000, 51), &a, false), Verdict::Failed);
    assert_eq!(judge(w(99, 0), &a, false), Verdict::Inconclusive);
    assert_eq!(judge(w(100, 0), &a, false), Verdict::Passed);
    // A failed check fails the window whatever the figures, even too few of them.
    assert_eq!(judge(w(1000, 0), &a, true), Verdict::Failed);
    assert_eq!(judge(w(0, 0), &a, true), Verdict::Failed);
    // Errors among too few requests: nothing to judge yet.
    assert_eq!(judge(w(10, 10), &a, false), Verdict::Inconclusive);
    assert_eq!(w(0, 0).error_rate(), 0.0);
    assert_eq!(w(200, 50).error_rate(), 0.25);
}

#[test]
fn decisions() {
    use Decision::*;
    assert_eq!(decide(Verdict::Passed, false, false), Proceed);
    assert_eq!(decide(Verdict::Failed, true, false), Fail);
    // A promote does not wait for enough requests; errors still fail it (above).
    assert_eq!(decide(Verdict::Inconclusive, true, false), Proceed);
    assert_eq!(decide(Verdict::Inconclusive, false, false), Extend);
    assert_eq!(decide(Verdict::Inconclusive, false, true), GiveUp);
}

#[test]
fn a_canary_gives_its_traffic_back_only_before_its_final_shift() {
    use crate::desired::Pause;
    use crate::names::SlotRef;
    let at = SlotRef::new("prod", "api", "web-1", "green");
    let (balancer, env, app, version) = (
        "edge".to_owned(),
        "prod".to_owned(),
        "api".to_owned(),
        "2".to_owned(),
    );
    let before_the_shift = [
        Action::Start {
            at: at.clone(),
            version: version.clone(),
        },
        Action::Probe { at: at.clone() },
        Action::Enable {
            balancer: balancer.clone(),
            at: at.clone(),
        },
        Action::Weigh {
            balancer: balancer.clone(),
            env: env.clone(),
            app: app.clone(),
            version: version.clone(),
            step: 0,
            weight: 10,
            canary: vec![at.clone()],
            stable: vec![],
        },
        Action::Pause {
            balancer: balancer.clone(),
            env: env.clone(),
            app: app.clone(),
            version: version.clone(),
            step: 0,
            pause: Pause::UntilPromoted,
            canary: vec![at.clone()],
        },
    ];
    let from_the_shift = [
        Action::Shift {
            balancer: balancer.clone(),
            env: env.clone(),
            app: app.clone(),
            to: vec![at.clone()],
            from: vec![],
        },
        Action::Drain {
            balancer: balancer.clone(),
            at: at.clone(),
        },
        Action::Stop {
            at,
            version: "1".into(),
        },
        Action::Conclude {
            balancer: balancer.clone(),
            env,
            app,
            version,
        },
        Action::ApplyConfig { balancer },
    ];
    for a in &before_the_shift {
        assert!(takes_back(a), "{a}");
    }
    for a in &from_the_shift {
        assert!(!takes_back(a), "{a}");
    }
}
