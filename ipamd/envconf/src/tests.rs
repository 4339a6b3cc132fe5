//! Table-driven tests: per getter, unset / empty / valid / invalid (error naming variable and
//! value) / upstream fallback (warning naming variable and value).
#![allow(clippy::unwrap_used)]

use super::*;
use std::fmt::Debug;

/// The variable every table reads.
const VAR: &str = "AWSCNI_ENVCONF_TEST";

/// What one read should give.
#[derive(Debug)]
enum Want<T> {
    /// This value, no problem recorded.
    Ok(T),
    /// This value (the default), and exactly one error naming `VAR` and the input.
    Err(T),
    /// This value (upstream's fallback), and exactly one warning naming `VAR` and the input.
    Warn(T),
}

/// Runs `get` over an environment holding `VAR=value` (or nothing) and returns the value, the
/// errors and the warnings.
fn run<T>(
    value: Option<&str>,
    get: &dyn Fn(&mut Reader<'_>) -> T,
) -> (T, Vec<Problem>, Vec<Problem>) {
    let env: BTreeMap<String, String> = value
        .map(|v| (VAR.to_owned(), v.to_owned()))
        .into_iter()
        .collect();
    let mut r = Reader::new(&env);
    let got = get(&mut r);
    (got, r.errors, r.warnings)
}

/// Asserts one problem that names `VAR` and `value` both in its fields and in its message.
fn assert_names(kind: &str, problems: &[Problem], value: &str) {
    assert_eq!(problems.len(), 1, "{kind} for {value:?}: {problems:?}");
    let p = &problems[0];
    assert_eq!(p.var, VAR);
    assert_eq!(p.value, value);
    let text = p.to_string();
    assert!(
        text.starts_with(&format!("{VAR}={value:?}: ")),
        "{kind} text {text:?} does not name {VAR} and {value:?}"
    );
    assert!(!p.reason.is_empty());
}

/// Checks every row of `table` against `get`; returns the problems seen, for reason checks.
fn check<T: PartialEq + Debug>(
    table: &[(Option<&str>, Want<T>)],
    get: &dyn Fn(&mut Reader<'_>) -> T,
) -> Vec<Problem> {
    let mut seen = Vec::new();
    for (value, want) in table {
        let (got, errors, warnings) = run(*value, get);
        let input = value.unwrap_or_default();
        match want {
            Want::Ok(v) => {
                assert_eq!(&got, v, "{value:?}");
                assert!(
                    errors.is_empty() && warnings.is_empty(),
                    "{value:?}: {errors:?} {warnings:?}"
                );
            }
            Want::Err(v) => {
                assert_eq!(&got, v, "{value:?}");
                assert_names("error", &errors, input);
                assert!(warnings.is_empty(), "{value:?}: {warnings:?}");
            }
            Want::Warn(v) => {
                assert_eq!(&got, v, "{value:?}");
                assert_names("warning", &warnings, input);
                assert!(errors.is_empty(), "{value:?}: {errors:?}");
            }
        }
        seen.extend(errors);
        seen.extend(warnings);
    }
    seen
}

#[test]
fn parse_go_bool_accepts_exactly_go_spellings() {
    for (v, want) in [
        ("1", Some(true)),
        ("t", Some(true)),
        ("T", Some(true)),
        ("TRUE", Some(true)),
        ("true", Some(true)),
        ("True", Some(true)),
        ("0", Some(false)),
        ("f", Some(false)),
        ("F", Some(false)),
        ("FALSE", Some(false)),
        ("false", Some(false)),
        ("False", Some(false)),
        ("tRUE", None),
        ("yes", None),
        ("on", None),
        (" true", None),
        ("2", None),
        ("", None),
    ] {
        assert_eq!(parse_go_bool(v), want, "{v:?}");
    }
}

#[test]
fn bool_getter() {
    for default in [false, true] {
        let errors = check(
            &[
                (None, Want::Ok(default)),
                (Some(""), Want::Ok(default)),
                (Some("true"), Want::Ok(true)),
                (Some("T"), Want::Ok(true)),
                (Some("1"), Want::Ok(true)),
                (Some("False"), Want::Ok(false)),
                (Some("f"), Want::Ok(false)),
                (Some("0"), Want::Ok(false)),
                (Some("yes"), Want::Err(default)),
                (Some("tRuE"), Want::Err(default)),
                (Some(" true"), Want::Err(default)),
                (Some("2"), Want::Err(default)),
            ],
            &|r| r.bool(VAR, default),
        );
        assert!(errors.iter().all(|p| p.reason.contains("not a boolean")));
    }
}

#[test]
fn int_getter() {
    let errors = check(
        &[
            (None, Want::Ok(None)),
            (Some(""), Want::Ok(None)),
            (Some("42"), Want::Ok(Some(42))),
            (Some("-7"), Want::Ok(Some(-7))),
            (Some("+3"), Want::Ok(Some(3))),
            (Some("0"), Want::Ok(Some(0))),
            (Some("4.5"), Want::Err(None)),
            (Some("0x10"), Want::Err(None)),
            (Some(" 1"), Want::Err(None)),
            (Some("1 "), Want::Err(None)),
            (Some("ten"), Want::Err(None)),
            (Some("99999999999999999999"), Want::Err(None)),
        ],
        &|r| r.int(VAR).map(|(_, n)| n),
    );
    assert!(errors.iter().all(|p| p.reason == "not a base-10 integer"));
    // The text is returned as found, for the caller's own messages.
    let (got, _, _) = run(Some("+3"), &|r| r.int(VAR));
    assert_eq!(got, Some(("+3".to_owned(), 3)));
}

#[test]
fn int_in_getter_closed_range() {
    let errors = check(
        &[
            (None, Want::Ok(9001_u32)),
            (Some(""), Want::Ok(9001)),
            (Some("576"), Want::Ok(576)),
            (Some("1500"), Want::Ok(1500)),
            (Some("9001"), Want::Ok(9001)),
            (Some("575"), Want::Err(9001)),
            (Some("9002"), Want::Err(9001)),
            (Some("-1"), Want::Err(9001)),
            (Some("4294967296"), Want::Err(9001)),
            (Some("jumbo"), Want::Err(9001)),
        ],
        &|r| r.int_in(VAR, 576_u32..=9001, 9001),
    );
    let range_errors: Vec<_> = errors.iter().filter(|p| p.value != "jumbo").collect();
    assert_eq!(range_errors.len(), 4);
    for p in range_errors {
        assert_eq!(p.reason, "must be between 576 and 9001", "{p}");
    }
}

#[test]
fn int_in_getter_open_range() {
    let errors = check(
        &[
            (None, Want::Ok(30_u64)),
            (Some("0"), Want::Ok(0)),
            (Some("90"), Want::Ok(90)),
            (Some("-1"), Want::Err(30)),
            (Some("30s"), Want::Err(30)),
        ],
        &|r| r.int_in(VAR, 0_u64.., 30),
    );
    assert_eq!(errors[0].reason, "must be at least 0");
}

#[test]
fn duration_getter_in_both_units() {
    let errors = check(
        &[
            (None, Want::Ok(Duration::from_secs(5))),
            (Some(""), Want::Ok(Duration::from_secs(5))),
            (Some("1"), Want::Ok(Duration::from_secs(1))),
            (Some("3600"), Want::Ok(Duration::from_secs(3600))),
            (Some("0"), Want::Err(Duration::from_secs(5))),
            (Some("3601"), Want::Err(Duration::from_secs(5))),
            (Some("5s"), Want::Err(Duration::from_secs(5))),
        ],
        &|r| r.duration_in(VAR, Unit::Seconds, 1..=3600, Duration::from_secs(5)),
    );
    assert_eq!(errors[0].reason, "must be between 1 and 3600 seconds");

    let errors = check(
        &[
            (None, Want::Ok(Duration::from_millis(5000))),
            (Some("0"), Want::Ok(Duration::ZERO)),
            (Some("2500"), Want::Ok(Duration::from_millis(2500))),
            (Some("60001"), Want::Err(Duration::from_millis(5000))),
            (Some("-1"), Want::Err(Duration::from_millis(5000))),
            (Some("5s"), Want::Err(Duration::from_millis(5000))),
        ],
        &|r| {
            r.duration_in(
                VAR,
                Unit::Milliseconds,
                0..=60_000,
                Duration::from_millis(5000),
            )
        },
    );
    assert_eq!(errors[0].reason, "must be between 0 and 60000 milliseconds");
}

#[test]
fn count_getter_warns_where_upstream_clamps() {
    for (default, on_negative) in [(1, 1), (0, 0), (7, 2)] {
        let problems = check(
            &[
                (None, Want::Ok(default)),
                (Some(""), Want::Ok(default)),
                (Some("0"), Want::Ok(0)),
                (Some("3"), Want::Ok(3)),
                (Some("4294967295"), Want::Ok(u32::MAX)),
                (Some("-1"), Want::Warn(on_negative)),
                (Some("-20"), Want::Warn(on_negative)),
                (Some("two"), Want::Err(default)),
                (Some("1.5"), Want::Err(default)),
                (Some("4294967296"), Want::Err(default)),
            ],
            &|r| r.count(VAR, default, on_negative),
        );
        let warning = problems.iter().find(|p| p.value == "-1").unwrap();
        assert!(
            warning.reason.contains(&format!("using {on_negative}")),
            "{warning}"
        );
    }
}

#[test]
fn abs_path_getter() {
    let d = || PathBuf::from("/var/run/default");
    check(
        &[
            (None, Want::Ok(d())),
            (Some(""), Want::Ok(d())),
            (
                Some("/tmp/x/ipam.json"),
                Want::Ok(PathBuf::from("/tmp/x/ipam.json")),
            ),
            (Some("/"), Want::Ok(PathBuf::from("/"))),
            (Some("relative/path"), Want::Err(d())),
            (Some("./x"), Want::Err(d())),
            (Some(" /x"), Want::Err(d())),
        ],
        &|r| r.abs_path(VAR, "/var/run/default"),
    );
}

#[test]
fn url_getter() {
    let some = |s: &str| Some(s.to_owned());
    check(
        &[
            (None, Want::Ok(None)),
            (Some(""), Want::Ok(None)),
            (
                Some("http://127.0.0.1:4566"),
                Want::Ok(some("http://127.0.0.1:4566")),
            ),
            (
                Some("https://k8s.example:443"),
                Want::Ok(some("https://k8s.example:443")),
            ),
            (Some("http://"), Want::Err(None)),
            (Some("ec2.local"), Want::Err(None)),
            (Some("ftp://x"), Want::Err(None)),
            (Some("HTTP://x"), Want::Err(None)),
        ],
        &|r| r.url(VAR),
    );
}

#[test]
fn string_and_list_getters_never_fail() {
    check(
        &[
            (None, Want::Ok("dflt".to_owned())),
            (Some(""), Want::Ok("dflt".to_owned())),
            // Not trimmed: a free-form value is passed on as written.
            (Some(" x "), Want::Ok(" x ".to_owned())),
        ],
        &|r| r.string(VAR, "dflt"),
    );
    let v = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    check(
        &[
            (None, Want::Ok(v(&[]))),
            (Some(""), Want::Ok(v(&[]))),
            (Some(","), Want::Ok(v(&[]))),
            (Some("a"), Want::Ok(v(&["a"]))),
            (
                Some("v1.23.1, ,v1.22.0"),
                Want::Ok(v(&["v1.23.1", "v1.22.0"])),
            ),
            (Some(" a , b,,c "), Want::Ok(v(&["a", "b", "c"]))),
        ],
        &|r| r.list(VAR),
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Prng,
    Hash,
    Off,
    Unset,
}

const MODES: [(&str, Mode); 3] = [
    ("prng", Mode::Prng),
    ("hashrandom", Mode::Hash),
    ("none", Mode::Off),
];

#[test]
fn choice_getter_error_and_warning() {
    let errors = check(
        &[
            (None, Want::Ok(Mode::Unset)),
            (Some(""), Want::Ok(Mode::Unset)),
            (Some("prng"), Want::Ok(Mode::Prng)),
            (Some("hashrandom"), Want::Ok(Mode::Hash)),
            (Some("none"), Want::Ok(Mode::Off)),
            // Exact spelling, as upstream compares.
            (Some("Prng"), Want::Err(Mode::Unset)),
            (Some("random"), Want::Err(Mode::Unset)),
        ],
        &|r| r.choice(VAR, Case::Exact, &MODES, Mode::Unset, OnUnknown::Error),
    );
    assert_eq!(errors[0].reason, "accepted: prng, hashrandom, none");

    let warnings = check(
        &[
            (Some("none"), Want::Ok(Mode::Off)),
            (Some("fully"), Want::Warn(Mode::Prng)),
        ],
        &|r| r.choice(VAR, Case::Exact, &MODES, Mode::Prng, OnUnknown::Warn),
    );
    assert!(
        warnings[0].reason.contains("using prng like upstream"),
        "{}",
        warnings[0]
    );
    // A default outside the options is described generically.
    let (_, _, w) = run(Some("x"), &|r| {
        r.choice(VAR, Case::Exact, &MODES, Mode::Unset, OnUnknown::Warn)
    });
    assert!(w[0].reason.contains("using the default"), "{}", w[0]);
}

#[test]
fn choice_ignore_case_getter() {
    let warnings = check(
        &[
            (None, Want::Ok(Mode::Prng)),
            (Some("PRNG"), Want::Ok(Mode::Prng)),
            (Some("HashRandom"), Want::Ok(Mode::Hash)),
            (Some("None"), Want::Ok(Mode::Off)),
            (Some("verbose"), Want::Warn(Mode::Prng)),
        ],
        &|r| r.choice(VAR, Case::Ignore, &MODES, Mode::Prng, OnUnknown::Warn),
    );
    assert!(warnings[0].reason.contains("any case"), "{}", warnings[0]);
}

#[test]
fn range_descriptions() {
    assert_eq!(describe_range(&(1..=3)), "must be between 1 and 3");
    assert_eq!(describe_range(&(0..)), "must be at least 0");
    assert_eq!(describe_range(&(..=5)), "must be at most 5");
    assert_eq!(describe_range(&(1..5)), "must be at least 1 and below 5");
    assert_eq!(
        describe_range(&(Bound::Excluded(0), Bound::Unbounded)),
        "must be above 0"
    );
}

#[test]
fn problems_are_collected_in_order_and_finish_splits_them() {
    let env: HashMap<String, String> = [("A", "x"), ("B", "-1"), ("C", "maybe"), ("D", "ok")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let mut r = Reader::new(&env);
    assert_eq!(r.int_in("A", 0..=10, 5), 5);
    assert_eq!(r.count("B", 1, 1), 1);
    assert!(!r.bool("C", false));
    assert_eq!(r.string("D", ""), "ok");
    let errors = r.finish().unwrap_err();
    let vars: Vec<_> = errors.iter().map(|p| p.var).collect();
    assert_eq!(vars, ["A", "C"]);
    assert_eq!(
        Joined(&errors).to_string(),
        format!(
            "A=\"x\": not a base-10 integer; C=\"maybe\": {}",
            errors[1].reason
        )
    );

    let mut r = Reader::new(&env);
    r.count("B", 1, 1);
    let warnings = r.finish().unwrap();
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].var, "B");
    assert_eq!(Joined(&[]).to_string(), "");
}

#[test]
fn env_sources() {
    let pairs = [("A".to_owned(), "1".to_owned())];
    let hash: HashMap<String, String> = pairs.iter().cloned().collect();
    let btree: BTreeMap<String, String> = pairs.iter().cloned().collect();
    let closure = |k: &str| (k == "A").then(|| "1".to_owned());
    let dyn_fn: &dyn Fn(&str) -> Option<String> = &closure;
    let sources: [&dyn Env; 4] = [&hash, &btree, &closure, &dyn_fn];
    for env in sources {
        assert_eq!(env.var("A").as_deref(), Some("1"));
        assert_eq!(env.var("B"), None);
        assert!(Reader::new(env).bool("A", false));
    }
}

#[test]
fn display_quotes_value() {
    let p = Problem {
        var: "POD_MTU",
        value: "jumbo frames\n".to_owned(),
        reason: "not a base-10 integer".to_owned(),
    };
    assert_eq!(
        p.to_string(),
        "POD_MTU=\"jumbo frames\\n\": not a base-10 integer"
    );
}
