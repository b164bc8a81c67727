//! `faas new`: a ready-to-deploy function, written the way we want functions written: it serves
//! `$PORT` and `/health`, answers any path and method, and logs a line per request.

use std::path::PathBuf;

use super::output::Out;
use super::{Failure, Template};

const STDLIB: &str = include_str!("templates/stdlib.py");
const FASTAPI: &str = include_str!("templates/fastapi.py");

/// Writes `NAME.py` in the current directory.
pub fn write(out: &Out, name: &str, template: Template, force: bool) -> Result<(), Failure> {
    control::function::validate_name(name)?;
    let text = match template {
        Template::Stdlib => STDLIB,
        Template::Fastapi => FASTAPI,
    }
    .replace("NAME", name);
    let path = PathBuf::from(format!("{name}.py"));
    if path.exists() && !force {
        return Err(Failure(format!(
            "{} exists; choose another name, or --force to overwrite it",
            path.display()
        )));
    }
    std::fs::write(&path, text)
        .map_err(|e| Failure(format!("cannot write {}: {e}", path.display())))?;
    if out.json {
        out.json_value(&serde_json::json!({"name": name, "file": path}));
    } else {
        out.done(&format!("wrote {}", path.display()));
        out.note(&format!(
            "next: faas deploy {0}.py && faas invoke {0} /",
            name
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_carry_a_valid_script_block() {
        for t in [STDLIB, FASTAPI] {
            let meta = control::pep723::parse(&t.replace("NAME", "f")).unwrap();
            assert_eq!(meta.requires_python.as_deref(), Some(">=3.11"));
        }
        assert!(control::pep723::parse(STDLIB)
            .unwrap()
            .dependencies
            .is_empty());
    }
}
