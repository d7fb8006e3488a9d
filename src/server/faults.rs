//! Fault injection for tests: parses `OPERATION:KIND:PROBABILITY,…` and rolls it per request.
//! Decides which fault a request gets; carrying the fault out is the handlers' job.
//! Operations are named by `op::Op` (only CDCS operations, by their names, any case).

use super::op::Op;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// What a fault does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer 503 ServiceUnavailable without doing the operation.
    Unavailable,
    /// Answer 500 InternalError without doing the operation.
    Internal,
    /// Drop the connection before doing the operation.
    Reset,
    /// Do the operation, then drop the connection without an answer.
    ResetAfter,
    /// Delay the answer (for Complete: hold the commit while spaces stream).
    Slow(Duration),
    /// GetObject: full Content-Length, about half the body, then drop.
    Truncate,
    /// Complete: 200 and spaces, then an InternalError body; nothing committed.
    After200,
    /// Complete: 200, then silence (no keep-alive spaces) while the commit is
    /// held this long: a server that hangs.
    Stall(Duration),
    /// Complete: 200 and spaces; the connection drops after this long while the
    /// merge goes on as long again, then commits: a cut mid-merge.
    Cut(Duration),
}

impl Fault {
    /// Whether this kind can happen to `op` (`truncate` and `after200` are specific).
    fn applies_to(self, op: Op) -> bool {
        match self {
            Fault::Truncate => op == Op::GetObject,
            Fault::After200 | Fault::Stall(_) | Fault::Cut(_) => op == Op::CompleteMultipartUpload,
            _ => true,
        }
    }
}

/// One rule of a fault spec.
#[derive(Debug, Clone, PartialEq)]
struct Rule {
    /// `None` is `*`: every operation.
    op: Option<Op>,
    kind: Fault,
    probability: f64,
}

/// Parses a spec; an empty spec (or only commas and spaces) has no rules.
fn parse_rules(spec: &str) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let fields: Vec<&str> = item.split(':').map(str::trim).collect();
        let [op, kind, p] = fields[..] else {
            return Err(format!(
                "fault rule {item:?} is not OPERATION:KIND:PROBABILITY"
            ));
        };
        let op = if op == "*" {
            None
        } else {
            Some(
                op.parse::<Op>()
                    .map_err(|_| format!("unknown operation {op:?} in fault rule"))?,
            )
        };
        let fault = match kind.to_ascii_lowercase().as_str() {
            "503" => Fault::Unavailable,
            "500" => Fault::Internal,
            "reset" => Fault::Reset,
            "reset-after" => Fault::ResetAfter,
            "truncate" => Fault::Truncate,
            "after200" => Fault::After200,
            other => {
                let (name, d) = other.split_once('=').unwrap_or((other, ""));
                let dur = || {
                    humantime::parse_duration(d)
                        .map_err(|e| format!("bad duration in {kind:?}: {e}"))
                };
                match name {
                    "slow" => Fault::Slow(dur()?),
                    "stall" => Fault::Stall(dur()?),
                    "cut" => Fault::Cut(dur()?),
                    _ => {
                        return Err(format!(
                            "unknown fault kind {kind:?} (503, 500, reset, reset-after, \
                             slow=DUR, truncate, after200, stall=DUR, cut=DUR)"
                        ))
                    }
                }
            }
        };
        if let Some(op) = op {
            if !fault.applies_to(op) {
                return Err(format!("fault {kind} does not apply to {op}"));
            }
        }
        let probability: f64 = p
            .parse()
            .ok()
            .filter(|p: &f64| (0.0..=1.0).contains(p))
            .ok_or_else(|| format!("probability {p:?} is not a number in [0, 1]"))?;
        rules.push(Rule {
            op,
            kind: fault,
            probability,
        });
    }
    Ok(rules)
}

/// The server's fault rules and their deterministic dice.
pub struct Faults {
    rules: Vec<Rule>,
    rng: StdRng,
}

impl Faults {
    /// Rules from `spec`, dice seeded with `seed` (so a test's faults repeat).
    pub fn parse(spec: &str, seed: u64) -> Result<Faults, String> {
        Ok(Faults {
            rules: parse_rules(spec)?,
            rng: StdRng::seed_from_u64(seed),
        })
    }

    /// The fault for one request of `op`: rules in order, each matching rule rolls
    /// its probability, the first hit wins.
    pub fn roll(&mut self, op: Op) -> Option<Fault> {
        for rule in &self.rules {
            if rule.op.is_some_and(|o| o != op) || !rule.kind.applies_to(op) {
                continue;
            }
            // random() is in [0, 1): probability 1 always hits, 0 never does.
            if self.rng.random::<f64>() < rule.probability {
                return Some(rule.kind);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_every_kind() {
        let rules = parse_rules(
            "UploadPart:503:0.2, *:reset:0.1,completemultipartupload:slow=3s:1,\
             GetObject:truncate:0.5,CompleteMultipartUpload:after200:1,PutObject:reset-after:1,*:500:0,\
             CompleteMultipartUpload:stall=2s:1,CompleteMultipartUpload:cut=500ms:1",
        )
        .unwrap();
        assert_eq!(rules.len(), 9);
        assert_eq!(rules[7].kind, Fault::Stall(Duration::from_secs(2)));
        assert_eq!(rules[8].kind, Fault::Cut(Duration::from_millis(500)));
        assert_eq!(rules[0].op, Some(Op::UploadPart));
        assert_eq!(rules[1].op, None);
        assert_eq!(rules[2].op, Some(Op::CompleteMultipartUpload));
        assert_eq!(rules[2].kind, Fault::Slow(Duration::from_secs(3)));
        assert_eq!(rules[3].kind, Fault::Truncate);
        assert!(parse_rules("").unwrap().is_empty());
        assert!(parse_rules(" , ").unwrap().is_empty());
    }

    #[test]
    fn bad_specs_are_refused() {
        for bad in [
            "x",
            "Nope:503:1",
            "*:504:1",
            "*:503:1.5",
            "*:slow=x:1",
            "PutObject:truncate:1",
            "UploadPart:stall=1s:1",
            "*:cut:1",
        ] {
            assert!(parse_rules(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn first_hit_wins_and_specific_kinds_skip_other_operations() {
        let mut f = Faults::parse("*:truncate:1,*:503:1", 7).unwrap();
        assert_eq!(f.roll(Op::GetObject), Some(Fault::Truncate));
        assert_eq!(f.roll(Op::PutObject), Some(Fault::Unavailable));
    }

    #[test]
    fn same_seed_rolls_the_same_faults() {
        let mut a = Faults::parse("*:503:0.5", 42).unwrap();
        let mut b = Faults::parse("*:503:0.5", 42).unwrap();
        let first: Vec<_> = (0..32).map(|_| a.roll(Op::UploadPart)).collect();
        let again: Vec<_> = (0..32).map(|_| b.roll(Op::UploadPart)).collect();
        assert_eq!(first, again);
        assert!(first.iter().any(Option::is_some) && first.iter().any(Option::is_none));
        assert_eq!(Faults::parse("", 1).unwrap().roll(Op::UploadPart), None);
    }
}
