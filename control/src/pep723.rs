//! PEP 723 inline script metadata: the `# /// script` block of a Python script.
//!
//! Follows the reference implementation of the PEP: a block starts with `# /// TYPE`, every
//! content line is `#` or `# ...`, and it ends with `# ///`. Exactly one `script` block is
//! allowed. Its TOML must parse, `requires-python` must be a PEP 440 version specifier and
//! `dependencies` non-empty strings.

use std::str::FromStr;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The reference regex of PEP 723 (multi-line mode).
static BLOCK: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$")
        .expect("the PEP 723 regex compiles")
});

/// What the `script` block says.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScriptMetadata {
    /// The `requires-python` specifier, when given.
    pub requires_python: Option<String>,
    /// The dependencies, PEP 508 strings.
    pub dependencies: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawMetadata {
    requires_python: Option<toml::Value>,
    dependencies: Option<toml::Value>,
}

/// Parses and validates the `script` block of `source`.
pub fn parse(source: &str) -> Result<ScriptMetadata> {
    // CRLF scripts are common from Windows editors; the PEP's regex is line-feed based.
    let normalized;
    let source = if source.contains('\r') {
        normalized = source.replace("\r\n", "\n");
        normalized.as_str()
    } else {
        source
    };
    // Two blocks back to back would read as one by the regex (its content lines may start
    // with `# ///`); count the openings first so that the user hears what is wrong.
    if source
        .lines()
        .filter(|l| l.trim_end() == "# /// script")
        .count()
        > 1
    {
        return Err(bad(
            "the script has more than one `# /// script` block; PEP 723 allows exactly one",
        ));
    }
    let mut scripts = BLOCK
        .captures_iter(source)
        .filter(|c| &c["type"] == "script");
    let Some(block) = scripts.next() else {
        let opened = source.lines().any(|l| l.trim_end() == "# /// script");
        return Err(bad(if opened {
            "the `# /// script` block is not closed: end it with a line `# ///`, and start every \
             line inside it with `#`"
        } else {
            "the script has no PEP 723 metadata: add a block `# /// script` ... `# ///` with \
             `requires-python` and `dependencies`"
        }));
    };
    if scripts.next().is_some() {
        return Err(bad(
            "the script has more than one `# /// script` block; PEP 723 allows exactly one",
        ));
    }
    let toml_text: String = block["content"]
        .lines()
        .map(|line| line.strip_prefix("# ").unwrap_or(&line[1..]))
        .collect::<Vec<_>>()
        .join("\n");
    let raw: RawMetadata = toml::from_str(&toml_text)
        .map_err(|e| bad(&format!("the `# /// script` block is not valid TOML: {e}")))?;
    let requires_python = match raw.requires_python {
        None => None,
        Some(toml::Value::String(s)) => {
            pep440_rs::VersionSpecifiers::from_str(&s).map_err(|e| {
                bad(&format!(
                    "requires-python = {s:?} is not a valid version specifier (e.g. \">=3.11\"): {e}"
                ))
            })?;
            Some(s)
        }
        Some(_) => return Err(bad("requires-python must be a string such as \">=3.11\"")),
    };
    let dependencies = match raw.dependencies {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                toml::Value::String(s) if !s.trim().is_empty() => Ok(s),
                _ => Err(bad(&format!(
                    "dependencies[{i}] must be a non-empty string such as \"fastapi>=0.110\""
                ))),
            })
            .collect::<Result<_>>()?,
        Some(_) => return Err(bad("dependencies must be an array of strings")),
    };
    Ok(ScriptMetadata {
        requires_python,
        dependencies,
    })
}

fn bad(msg: &str) -> Error {
    Error::BadRequest(msg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# /// script\n# requires-python = \">=3.11\"\n# dependencies = [\n#   \"requests<3\",\n#   \"rich\",\n# ]\n# ///\nprint('hi')\n";

    #[test]
    fn parses_the_pep_example() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.requires_python.as_deref(), Some(">=3.11"));
        assert_eq!(m.dependencies, vec!["requests<3", "rich"]);
    }

    #[test]
    fn crlf_line_ends() {
        let m = parse(&GOOD.replace('\n', "\r\n")).unwrap();
        assert_eq!(m.dependencies.len(), 2);
    }

    #[test]
    fn no_block() {
        let e = parse("print('hi')\n").unwrap_err();
        assert!(e.to_string().contains("no PEP 723 metadata"), "{e}");
    }

    #[test]
    fn two_blocks() {
        let e = parse(&format!("{GOOD}{GOOD}")).unwrap_err();
        assert!(e.to_string().contains("more than one"), "{e}");
        let block = "# /// script\n# dependencies = []\n# ///\n";
        let e = parse(&format!("{block}{block}")).unwrap_err();
        assert!(e.to_string().contains("more than one"), "{e}");
    }

    #[test]
    fn unclosed_block() {
        let e = parse("# /// script\n# dependencies = []\nprint(1)\n").unwrap_err();
        assert!(e.to_string().contains("not closed"), "{e}");
    }

    #[test]
    fn bad_toml() {
        let e = parse("# /// script\n# dependencies = [\n# ///\n").unwrap_err();
        assert!(e.to_string().contains("not valid TOML"), "{e}");
    }

    #[test]
    fn other_block_types_are_ignored() {
        let src = format!("# /// pyproject\n# x = 1\n# ///\n\n{GOOD}");
        assert!(parse(&src).is_ok());
    }

    #[test]
    fn any_valid_specifier_is_accepted() {
        for spec in [">=3.11", "~=3.11", ">=3.9,<4", "==3.11.*"] {
            let src = format!("# /// script\n# requires-python = \"{spec}\"\n# ///\n");
            assert!(parse(&src).is_ok(), "{spec}");
        }
    }

    #[test]
    fn invalid_specifier_is_rejected() {
        let src = "# /// script\n# requires-python = \"python3\"\n# ///\n";
        assert!(parse(src)
            .unwrap_err()
            .to_string()
            .contains("not a valid version specifier"));
    }

    #[test]
    fn empty_dependency_is_rejected() {
        let src = "# /// script\n# dependencies = [\"\"]\n# ///\n";
        assert!(parse(src)
            .unwrap_err()
            .to_string()
            .contains("dependencies[0]"));
    }

    #[test]
    fn bare_hash_lines_are_blank_toml_lines() {
        let src = "# /// script\n#\n# dependencies = []\n#\n# ///\n";
        assert!(parse(src).is_ok());
    }

    #[test]
    fn block_without_blank_separator_is_unclosed() {
        // a content line that does not start with `#` breaks the block
        let src = "# /// script\nx = 1\n# ///\n";
        assert!(parse(src).is_err());
    }
}
