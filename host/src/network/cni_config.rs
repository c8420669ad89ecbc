//! Finds the default CNI network the way libcni does: the lexically first `.conf`,
//! `.conflist` or `.json` file in the conf dir that holds a valid network configuration.

use std::path::Path;

/// The default network: its name and the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultNetwork {
    /// The network's `name`.
    pub name: String,
    /// The file.
    pub file: String,
}

/// Reads `conf_dir`; the error says why the network is not ready.
pub fn default_network(conf_dir: &Path) -> Result<DefaultNetwork, String> {
    let rd = std::fs::read_dir(conf_dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!(
                "no CNI network config found in {}: the directory does not exist",
                conf_dir.display()
            )
        }
        _ => format!("cannot read CNI config dir {}: {e}", conf_dir.display()),
    })?;
    let mut files: Vec<_> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conf" | "conflist" | "json")
            )
        })
        .collect();
    files.sort();
    let mut problems = Vec::new();
    for f in files {
        let parsed = std::fs::read(&f).map_err(|e| e.to_string()).and_then(|b| {
            serde_json::from_slice::<serde_json::Value>(&b).map_err(|e| e.to_string())
        });
        match parsed {
            Ok(v) => {
                let name = v.get("name").and_then(|n| n.as_str()).unwrap_or_default();
                let has_plugins = v
                    .get("plugins")
                    .and_then(|p| p.as_array())
                    .is_some_and(|p| !p.is_empty());
                let has_type = v.get("type").and_then(|t| t.as_str()).is_some();
                if !name.is_empty() && (has_plugins || has_type) {
                    return Ok(DefaultNetwork {
                        name: name.to_owned(),
                        file: f.display().to_string(),
                    });
                }
                problems.push(format!(
                    "{}: no name, or neither type nor plugins",
                    f.display()
                ));
            }
            Err(e) => problems.push(format!("{}: {e}", f.display())),
        }
    }
    if problems.is_empty() {
        Err(format!(
            "no CNI network config found in {}",
            conf_dir.display()
        ))
    } else {
        Err(format!(
            "no valid CNI network config in {}: {}",
            conf_dir.display(),
            problems.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_valid_config_wins_and_bad_ones_are_reported() {
        let d = tempfile::tempdir().expect("tmp");
        assert!(default_network(&d.path().join("missing")).is_err());
        assert!(
            default_network(d.path())
                .expect_err("empty")
                .contains("no CNI network config")
        );
        std::fs::write(d.path().join("05-bad.conf"), "{").expect("w");
        assert!(
            default_network(d.path())
                .expect_err("bad")
                .contains("05-bad.conf")
        );
        std::fs::write(
            d.path().join("10-moat.conflist"),
            r#"{"cniVersion":"1.0.0","name":"moat","plugins":[{"type":"bridge"}]}"#,
        )
        .expect("w");
        assert_eq!(default_network(d.path()).expect("ok").name, "moat");
    }
}
