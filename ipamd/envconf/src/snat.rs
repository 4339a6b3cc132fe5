//! `AWS_VPC_K8S_CNI_RANDOMIZESNAT`, read by ipamd (SNAT rules), the entrypoint (conflist
//! `randomizeSNAT` for egress-cni) and the host-networking code; one definition so the three
//! cannot disagree on a spelling.

use crate::{Case, OnUnknown, Reader};

/// SNAT port randomisation (`AWS_VPC_K8S_CNI_RANDOMIZESNAT`): which flag the `SNAT` rule of
/// `AWS-SNAT-CHAIN-0` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RandomizeSnat {
    /// `prng` (upstream default): `--random-fully` (falls back to `--random` when iptables
    /// lacks it).
    #[default]
    Prng,
    /// `hashrandom`: `--random`.
    HashRandom,
    /// `none`: no port randomisation flag.
    None,
}

impl RandomizeSnat {
    /// The variable's name, upstream spelling.
    pub const VAR: &'static str = "AWS_VPC_K8S_CNI_RANDOMIZESNAT";

    /// Every value, in upstream's documentation order (also the order of "accepted: ..." in
    /// messages).
    pub const ALL: [Self; 3] = [Self::Prng, Self::HashRandom, Self::None];

    /// Upstream spelling, used in the environment and rendered into the conflist.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prng => "prng",
            Self::HashRandom => "hashrandom",
            Self::None => "none",
        }
    }

    /// Upstream's lenient parsing: `hashrandom` and `none` (surrounding white space ignored),
    /// anything else, including `prng` and typos, is `Prng`. Never fails.
    pub fn parse(s: &str) -> Self {
        match s.trim() {
            "hashrandom" => Self::HashRandom,
            "none" => Self::None,
            _ => Self::Prng,
        }
    }

    /// Reads [`Self::VAR`] from `reader`: exact spelling, unset or empty is `Prng`. An unknown
    /// value gives `Prng` and is recorded per `on_unknown`: ipamd passes [`OnUnknown::Warn`]
    /// (upstream logs and uses `prng`), the entrypoint [`OnUnknown::Error`] (it refuses bad
    /// values up front).
    pub fn read(reader: &mut Reader<'_>, on_unknown: OnUnknown) -> Self {
        reader.choice(
            Self::VAR,
            Case::Exact,
            &Self::ALL.map(|m| (m.as_str(), m)),
            Self::Prng,
            on_unknown,
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::Problem;
    use std::collections::BTreeMap;

    /// Reads the variable from an environment holding `value` (or nothing) with `on_unknown`.
    fn read(
        value: Option<&str>,
        on_unknown: OnUnknown,
    ) -> (RandomizeSnat, Result<Vec<Problem>, Vec<Problem>>) {
        let env: BTreeMap<String, String> = value
            .map(|v| (RandomizeSnat::VAR.to_owned(), v.to_owned()))
            .into_iter()
            .collect();
        let mut r = Reader::new(&env);
        let got = RandomizeSnat::read(&mut r, on_unknown);
        (got, r.finish())
    }

    #[test]
    fn spellings_round_trip() {
        let want = [
            ("prng", RandomizeSnat::Prng),
            ("hashrandom", RandomizeSnat::HashRandom),
            ("none", RandomizeSnat::None),
        ];
        assert_eq!(RandomizeSnat::ALL, want.map(|(_, m)| m));
        for (s, m) in want {
            assert_eq!(m.as_str(), s);
            assert_eq!(RandomizeSnat::parse(s), m);
            for on_unknown in [OnUnknown::Warn, OnUnknown::Error] {
                assert_eq!(read(Some(s), on_unknown), (m, Ok(vec![])), "{s}");
            }
        }
        assert_eq!(RandomizeSnat::default(), RandomizeSnat::Prng);
    }

    #[test]
    fn unset_or_empty_is_prng() {
        for value in [None, Some("")] {
            for on_unknown in [OnUnknown::Warn, OnUnknown::Error] {
                assert_eq!(
                    read(value, on_unknown),
                    (RandomizeSnat::Prng, Ok(vec![])),
                    "{value:?}"
                );
            }
        }
    }

    #[test]
    fn parse_is_upstream_lenient() {
        assert_eq!(RandomizeSnat::parse(" none\n"), RandomizeSnat::None);
        assert_eq!(
            RandomizeSnat::parse("\thashrandom "),
            RandomizeSnat::HashRandom
        );
        for other in ["", "bogus", "random", "Prng", "NONE", "HashRandom"] {
            assert_eq!(
                RandomizeSnat::parse(other),
                RandomizeSnat::Prng,
                "{other:?}"
            );
        }
    }

    #[test]
    fn reader_is_exact_and_warns_or_errors_per_caller() {
        let warn = "unknown value; using prng like upstream (accepted: prng, hashrandom, none)";
        let error = "accepted: prng, hashrandom, none";
        // Other case or surrounding spaces are not upstream spellings for the reader.
        for bad in ["NONE", "HashRandom", " none", "random", "fully"] {
            for (on_unknown, is_error, reason) in [
                (OnUnknown::Warn, false, warn),
                (OnUnknown::Error, true, error),
            ] {
                let (got, finished) = read(Some(bad), on_unknown);
                assert_eq!(got, RandomizeSnat::Prng, "{bad:?}");
                // Warnings only when there is no error, errors only when there is one.
                assert_eq!(finished.is_err(), is_error, "{bad:?}: {finished:?}");
                let problems = finished.unwrap_or_else(|e| e);
                assert_eq!(problems.len(), 1, "{bad:?}: {problems:?}");
                assert_eq!(problems[0].var, RandomizeSnat::VAR);
                assert_eq!(problems[0].value, bad);
                assert_eq!(problems[0].reason, reason);
            }
        }
    }
}
