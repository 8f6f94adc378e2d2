//! Versions and version constraints as Elastic's package registry reads them (shared by the
//! appliance's registry and the builder's `[[integration]]` selection): Masterminds/semver v3
//! (the Go library it uses), whose lenient parsing, partial versions (`8.1`, `8.x`) and
//! constraint grammar (`^8.1.0 || ^9.0.0`, `>=7.16.0, <8.0.0`, `1.2 - 1.4`) differ from the
//! `semver` crate's Cargo rules, so a package condition must match here exactly as there.

use std::cmp::Ordering;

/// A version: `major.minor.patch[-pre][+build]`; build metadata does not order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    pub pre: String,
}

/// Masterminds' message for any version it cannot read.
pub const INVALID: &str = "invalid semantic version";

impl Version {
    /// Strict: exactly three numeric parts without leading zeros, no `v` (`StrictNewVersion`,
    /// what the registry applies to package versions and paths).
    pub fn strict(s: &str) -> Option<Version> {
        let (core, pre, build) = split_pre_build(s)?;
        let parts: Vec<&str> = core.split('.').collect();
        if parts.len() != 3 {
            return None;
        }
        let mut n = [0u64; 3];
        for (i, p) in parts.iter().enumerate() {
            if p.is_empty() || (p.len() > 1 && p.starts_with('0')) {
                return None;
            }
            n[i] = number(p)?;
        }
        check_idents(pre, true)?;
        check_idents(build, false)?;
        Some(Version { major: n[0], minor: n[1], patch: n[2], pre: pre.to_owned() })
    }

    /// Lenient (`NewVersion`): a `v` prefix and missing minor or patch (taken as 0) allowed, as
    /// for `kibana.version=8.15` or `spec.max=2.10`.
    pub fn lenient(s: &str) -> Option<Version> {
        let p = Partial::parse(s.strip_prefix('v').unwrap_or(s))?;
        let fixed = |c: Option<Part>| match c {
            None => Some(0),
            Some(Part::Num(n)) => Some(n),
            Some(Part::Any) => None,
        };
        Some(Version {
            major: fixed(Some(p.major))?,
            minor: fixed(p.minor)?,
            patch: fixed(p.patch)?,
            pre: p.pre,
        })
    }

    pub fn is_prerelease(&self) -> bool {
        !self.pre.is_empty()
    }

    fn core(&self) -> (u64, u64, u64) {
        (self.major, self.minor, self.patch)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.core().cmp(&other.core()).then_with(|| compare_pre(&self.pre, &other.pre))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if !self.pre.is_empty() {
            write!(f, "-{}", self.pre)?;
        }
        Ok(())
    }
}

/// SemVer 2 precedence of pre-release strings: none ranks above any; identifiers compare
/// numerically when both are numbers, numbers below words, and a shorter list first.
fn compare_pre(a: &str, b: &str) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        _ => {}
    }
    let (mut x, mut y) = (a.split('.'), b.split('.'));
    loop {
        match (x.next(), y.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(p), Some(q)) => {
                let o = match (p.parse::<u64>(), q.parse::<u64>()) {
                    (Ok(m), Ok(n)) => m.cmp(&n),
                    (Ok(_), Err(_)) => Ordering::Less,
                    (Err(_), Ok(_)) => Ordering::Greater,
                    (Err(_), Err(_)) => p.cmp(q),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

fn split_pre_build(s: &str) -> Option<(&str, &str, &str)> {
    let (rest, build) = s.split_once('+').unwrap_or((s, ""));
    let (core, pre) = rest.split_once('-').unwrap_or((rest, ""));
    if s.contains('+') && build.is_empty() || rest.contains('-') && pre.is_empty() {
        return None;
    }
    Some((core, pre, build))
}

fn check_idents(s: &str, numeric_no_zero: bool) -> Option<()> {
    if s.is_empty() {
        return Some(());
    }
    for id in s.split('.') {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return None;
        }
        if numeric_no_zero
            && id.len() > 1
            && id.starts_with('0')
            && id.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
    }
    Some(())
}

fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Num(u64),
    /// `x`, `X` or `*`.
    Any,
}

/// A version in a constraint, where trailing parts may be missing or wildcards.
#[derive(Debug, Clone)]
struct Partial {
    major: Part,
    minor: Option<Part>,
    patch: Option<Part>,
    pre: String,
}

impl Partial {
    fn parse(s: &str) -> Option<Partial> {
        let (core, pre, build) = split_pre_build(s)?;
        check_idents(pre, false)?;
        check_idents(build, false)?;
        let mut parts = core.split('.');
        let part = |p: &str| match p {
            "x" | "X" | "*" => Some(Part::Any),
            p => number(p).map(Part::Num),
        };
        let major = part(parts.next()?)?;
        let minor = parts.next().map(part).map_or(Some(None), |p| p.map(Some))?;
        let patch = parts.next().map(part).map_or(Some(None), |p| p.map(Some))?;
        if parts.next().is_some() {
            return None;
        }
        Some(Partial { major, minor, patch, pre: pre.to_owned() })
    }

    /// Missing or wildcard parts as 0.
    fn floor(&self) -> Version {
        let n = |p: Option<Part>| match p {
            Some(Part::Num(n)) => n,
            _ => 0,
        };
        Version {
            major: n(Some(self.major)),
            minor: n(self.minor),
            patch: n(self.patch),
            pre: self.pre.clone(),
        }
    }

    /// How many leading parts are fixed numbers (0 to 3).
    fn fixed(&self) -> usize {
        let num = |p: Option<Part>| matches!(p, Some(Part::Num(_)));
        if !num(Some(self.major)) {
            0
        } else if !num(self.minor) {
            1
        } else if !num(self.patch) {
            2
        } else {
            3
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Tilde,
    Caret,
}

#[derive(Debug, Clone)]
struct Term {
    op: Op,
    version: Partial,
}

/// A constraint: alternatives (`||`) of terms that must all hold.
#[derive(Debug, Clone)]
pub struct Constraint {
    any_of: Vec<Vec<Term>>,
}

impl Constraint {
    pub fn parse(s: &str) -> Option<Constraint> {
        let mut any_of = Vec::new();
        for group in s.split("||") {
            let tokens: Vec<&str> = group
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|t| !t.is_empty())
                .collect();
            let mut terms = Vec::new();
            let mut i = 0;
            while i < tokens.len() {
                // A hyphen range: `1.2 - 1.4.5`.
                if tokens.get(i + 1) == Some(&"-") {
                    let low = Partial::parse(tokens[i])?;
                    let high = Partial::parse(tokens.get(i + 2)?)?;
                    terms.push(Term { op: Op::Ge, version: low });
                    terms.push(Term { op: Op::Le, version: high });
                    i += 3;
                    continue;
                }
                let mut token = tokens[i].to_owned();
                // An operator written apart from its version: `>= 7.16.0`.
                if token.bytes().all(|b| b"<>=!~^".contains(&b)) {
                    token.push_str(tokens.get(i + 1)?);
                    i += 1;
                }
                terms.push(Term::parse(&token)?);
                i += 1;
            }
            if terms.is_empty() {
                return None;
            }
            any_of.push(terms);
        }
        Some(Constraint { any_of })
    }

    pub fn check(&self, v: &Version) -> bool {
        self.any_of.iter().any(|terms| terms.iter().all(|t| t.check(v)))
    }
}

impl Term {
    fn parse(s: &str) -> Option<Term> {
        let ops: [(&str, Op); 11] = [
            (">=", Op::Ge),
            ("=>", Op::Ge),
            ("<=", Op::Le),
            ("=<", Op::Le),
            ("!=", Op::Ne),
            ("~>", Op::Tilde),
            (">", Op::Gt),
            ("<", Op::Lt),
            ("=", Op::Eq),
            ("~", Op::Tilde),
            ("^", Op::Caret),
        ];
        let (op, rest) = ops
            .iter()
            .find_map(|(p, op)| s.strip_prefix(p).map(|r| (*op, r)))
            .unwrap_or((Op::Eq, s));
        let rest = rest.strip_prefix('v').unwrap_or(rest);
        Some(Term { op, version: Partial::parse(rest)? })
    }

    fn check(&self, v: &Version) -> bool {
        // Masterminds: a pre-release satisfies only terms that name a pre-release.
        if v.is_prerelease() && self.version.pre.is_empty() {
            return false;
        }
        let c = &self.version;
        let floor = c.floor();
        let fixed = c.fixed();
        let prefix_eq = |n: usize| {
            (n < 1 || v.major == floor.major)
                && (n < 2 || v.minor == floor.minor)
                && (n < 3 || (v.patch == floor.patch && v.pre == floor.pre))
        };
        match self.op {
            Op::Eq => prefix_eq(fixed),
            Op::Ne => !prefix_eq(fixed),
            Op::Gt => match fixed {
                0 => false,
                1 => v.major > floor.major,
                2 => (v.major, v.minor) > (floor.major, floor.minor),
                _ => *v > floor,
            },
            Op::Lt => *v < floor,
            Op::Ge => *v >= floor,
            Op::Le => match fixed {
                0 => true,
                1 => v.major <= floor.major,
                2 => (v.major, v.minor) <= (floor.major, floor.minor),
                _ => *v <= floor,
            },
            Op::Tilde => {
                let upper = if fixed <= 1 {
                    (floor.major + 1, 0, 0)
                } else {
                    (floor.major, floor.minor + 1, 0)
                };
                *v >= floor && v.core() < upper
            }
            Op::Caret => {
                let upper = if floor.major > 0 || fixed <= 1 {
                    (floor.major + 1, 0, 0)
                } else if floor.minor > 0 || fixed <= 2 {
                    (0, floor.minor + 1, 0)
                } else {
                    (0, 0, floor.patch + 1)
                };
                *v >= floor && v.core() < upper
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(c: &str, v: &str) -> bool {
        Constraint::parse(c).unwrap().check(&Version::lenient(v).unwrap())
    }

    #[test]
    fn parses_strictly_and_leniently() {
        assert!(Version::strict("1.2.3-rc1").is_some());
        assert!(Version::strict("a.b.c").is_none());
        assert!(Version::strict("1.2").is_none());
        assert!(Version::strict("01.2.3").is_none());
        assert_eq!(Version::lenient("2.10").unwrap().to_string(), "2.10.0");
        assert!(Version::lenient("foo").is_none());
    }

    #[test]
    fn constraints_match_as_masterminds() {
        assert!(ok("^8.16.0", "8.17.1"));
        assert!(!ok("^8.16.0", "9.0.0"));
        assert!(ok(">=7.16.0", "8.0.0"));
        assert!(ok(">6.7.0", "7.2.1"));
        assert!(!ok(">6.7.0", "6.5.2"));
        assert!(ok("^7.14.0 || ^8.0.0", "8.3.0"));
        assert!(ok(">=7.0.0, <8.0.0", "7.9.0"));
        assert!(!ok(">= 7.0.0 < 8.0.0", "8.0.0"));
        assert!(ok("~7.2", "7.2.9"));
        assert!(!ok("~7.2", "7.3.0"));
        assert!(ok("7.x", "7.5.0"));
        assert!(ok("1.2 - 1.4", "1.4.9"));
        assert!(!ok("^8.0.0", "8.1.0-SNAPSHOT"));
        assert!(ok("^0.2.3", "0.2.9"));
        assert!(!ok("^0.2.3", "0.3.0"));
        assert!(Version::lenient("1.0.0-rc1").unwrap() < Version::lenient("1.0.0").unwrap());
    }
}
