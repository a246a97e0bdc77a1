//! Repository names, tags and digests as the distribution spec defines them,
//! and the hashing that checks content against a digest.

use std::fmt;

use sha2::{Digest as _, Sha256, Sha512};

use super::error::RegistryError;

/// The longest repository name the spec allows.
const MAX_NAME_LEN: usize = 255;

/// Checks a repository name against the spec's grammar: slash-separated
/// components of lowercase alphanumerics joined by `.`, `_`, `__` or dashes.
/// Because no component may be empty or start with a separator, a valid name
/// can never contain `..` or a leading `/`, which keeps it safe as a path.
pub fn validate_repository(name: &str) -> Result<(), RegistryError> {
    let valid =
        !name.is_empty() && name.len() <= MAX_NAME_LEN && name.split('/').all(valid_component);
    if valid {
        Ok(())
    } else {
        Err(RegistryError::name_invalid(name))
    }
}

fn valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run: one `.`, one or two `_`, or any number of `-`.
        let start = i;
        let sep = bytes[i];
        while i < bytes.len() && bytes[i] == sep {
            i += 1;
        }
        let run = i - start;
        let ok = match sep {
            b'.' => run == 1,
            b'_' => run <= 2,
            b'-' => true,
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Checks a tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    !bytes.is_empty()
        && bytes.len() <= 128
        && word(bytes[0])
        && bytes[1..]
            .iter()
            .all(|&b| word(b) || b == b'.' || b == b'-')
}

/// The hash algorithms a digest may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A content digest such as `sha256:<64 lowercase hex>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    pub fn parse(text: &str) -> Result<Digest, RegistryError> {
        let invalid = || RegistryError::digest_invalid(text);
        let (algorithm, hex) = text.split_once(':').ok_or_else(invalid)?;
        let algorithm = match algorithm {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(RegistryError::unsupported_digest(text)),
        };
        let hex_ok = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex_ok {
            return Err(invalid());
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }

    /// The digest of `bytes` under `algorithm`.
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let mut hasher = Hasher::new(algorithm);
        hasher.update(bytes);
        hasher.finish()
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

/// Incremental hashing for content being checked against a digest.
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest { algorithm, hex }
    }
}

/// What a manifest request names: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    pub fn parse(text: &str) -> Result<Reference, RegistryError> {
        if text.contains(':') {
            return Digest::parse(text).map(Reference::Digest);
        }
        if valid_tag(text) {
            Ok(Reference::Tag(text.to_owned()))
        } else {
            Err(RegistryError::tag_invalid(text))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(tag) => f.write_str(tag),
            Reference::Digest(digest) => digest.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_grammar() {
        for ok in [
            "pause",
            "library/nginx",
            "a/b-c/d__e",
            "k8s-staging.x/y",
            "a--b",
        ] {
            assert!(validate_repository(ok).is_ok(), "{ok} should be valid");
        }
        for bad in [
            "", "Pause", "a//b", "../etc", "a/.b", "a..b", "a___b", "-a", "a-", "/a", "a/",
        ] {
            assert!(validate_repository(bad).is_err(), "{bad} should be invalid");
        }
        assert!(validate_repository(&"a".repeat(256)).is_err());
    }

    #[test]
    fn tag_grammar() {
        assert!(valid_tag("v1.31.0"));
        assert!(valid_tag("sha256-abc.sig"));
        assert!(valid_tag("_x"));
        assert!(!valid_tag(".x"));
        assert!(!valid_tag("-x"));
        assert!(!valid_tag(&"a".repeat(129)));
    }

    #[test]
    fn digests_parse_and_hash() {
        let d = Digest::of(Algorithm::Sha256, b"");
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
        let d512 = Digest::of(Algorithm::Sha512, b"x");
        assert_eq!(Digest::parse(&d512.to_string()).unwrap(), d512);
        assert!(Digest::parse("sha256:ABC").is_err());
        assert!(Digest::parse("sha256:e3b0").is_err());
        assert!(Digest::parse("md5:abc").is_err());
        assert_eq!(
            Reference::parse("latest").unwrap(),
            Reference::Tag("latest".into())
        );
        assert!(Reference::parse("bad tag").is_err());
    }
}
