//! A small command line parser: positionals and `--option VALUE` / `--option=VALUE`.

use std::collections::HashMap;

use anyhow::{bail, Result};

pub struct Args {
    pub positionals: Vec<String>,
    options: HashMap<String, String>,
}

impl Args {
    /// Parse `argv`; `known` lists the options taking a value ("-o" is a short one).
    pub fn parse(argv: Vec<String>, known: &[&str]) -> Result<Self> {
        let mut positionals = Vec::new();
        let mut options = HashMap::new();
        let mut iter = argv.into_iter();
        let mut only_positionals = false;
        while let Some(arg) = iter.next() {
            if only_positionals || !arg.starts_with('-') || arg == "-" {
                positionals.push(arg);
                continue;
            }
            if arg == "--" {
                only_positionals = true;
                continue;
            }
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            if !known.contains(&name.as_str()) {
                bail!("unknown option {}", name);
            }
            let value = match inline {
                Some(v) => v,
                None => match iter.next() {
                    Some(v) => v,
                    None => bail!("option {} needs a value", name),
                },
            };
            // "-o" and "--output" are one option.
            let key = if name == "-o" {
                "--output".to_string()
            } else {
                name
            };
            if options.insert(key.clone(), value).is_some() {
                bail!("option {} given twice", key);
            }
        }
        Ok(Args {
            positionals,
            options,
        })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.options.get(name).map(String::as_str)
    }

    pub fn single_positional(&mut self, what: &str) -> Result<String> {
        match self.positionals.len() {
            0 => bail!("missing {}", what),
            1 => Ok(self.positionals.remove(0)),
            _ => bail!("expected one {}, got {}", what, self.positionals.len()),
        }
    }
}
