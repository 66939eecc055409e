//! The naming rules of SPEC §11, owned here so that the center, the agent and the `elves`
//! command refuse exactly the same names.

/// App, function, cron and auth names: `^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$`.
///
/// A name passing this rule is safe as a path component and as a routing-key word.
pub fn is_valid_name(name: &str) -> bool {
    let Some((first, rest)) = name.as_bytes().split_first() else {
        return false;
    };
    name.len() <= 64
        && (first.is_ascii_alphanumeric() || *first == b'_')
        && rest
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-'))
}

/// Package versions: `^[0-9A-Za-z.+-]{1,32}$`.
pub fn is_valid_version(version: &str) -> bool {
    (1..=32).contains(&version.len())
        && version
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'+' | b'-'))
}

/// Label keys and values (SPEC §12): 1–64 of `[A-Za-z0-9_.-]`.
pub fn is_valid_label(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_the_spec_rule() {
        assert!(is_valid_label("rack"));
        assert!(is_valid_label(".-_9"));
        assert!(is_valid_label(&"a".repeat(64)));
        assert!(!is_valid_label(""));
        assert!(!is_valid_label(&"a".repeat(65)));
        assert!(!is_valid_label("a=b"));
        assert!(!is_valid_label("a b"));
    }

    #[test]
    fn names_follow_the_spec_rule() {
        for good in [
            "a",
            "_",
            "0",
            "apptest",
            "my-app.v2",
            "_a.b-c",
            &"a".repeat(64),
        ] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in [
            "",
            ".hidden",
            "..",
            "-x",
            "a/b",
            "a b",
            "a|b",
            "é",
            "a\0",
            &"a".repeat(65),
        ] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn versions_follow_the_spec_rule() {
        for good in ["1", "1.0.0+build-7", &"9".repeat(32)] {
            assert!(is_valid_version(good), "{good}");
        }
        for bad in ["", "1 0", "1/0", "1_0", &"1".repeat(33)] {
            assert!(!is_valid_version(bad), "{bad:?}");
        }
    }
}
