//! Parsing of the common configuration shape `key=value,key=value`, with
//! one-sentence errors for malformed pairs, unknown keys and bad numbers.
//!
//! ```
//! use logstream_sdk::config::Settings;
//! let mut settings = Settings::parse("every=10", "level-counter").unwrap();
//! let every = settings.take_u64("every", 1000, 1).unwrap();
//! settings.finish().unwrap(); // refuses keys nobody took
//! assert_eq!(every, 10);
//! ```

use std::collections::BTreeMap;

/// Parsed `key=value` settings of one processor.
#[derive(Debug)]
pub struct Settings {
    processor: String,
    values: BTreeMap<String, String>,
}

impl Settings {
    /// Parse a comma-separated `key=value` list; empty means no settings.
    pub fn parse(config: &str, processor: &str) -> Result<Self, String> {
        let mut values = BTreeMap::new();
        for pair in config.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(format!(
                    "{processor} expects settings as `key=value`, got {pair:?}"
                ));
            };
            let key = key.trim().to_string();
            if values
                .insert(key.clone(), value.trim().to_string())
                .is_some()
            {
                return Err(format!("{processor} got the setting `{key}` twice"));
            }
        }
        Ok(Settings {
            processor: processor.to_string(),
            values,
        })
    }

    /// Take a whole-number setting, `default` when absent, at least `min`.
    pub fn take_u64(&mut self, key: &str, default: u64, min: u64) -> Result<u64, String> {
        match self.values.remove(key) {
            None => Ok(default),
            Some(text) => match text.parse::<u64>() {
                Ok(n) if n >= min => Ok(n),
                _ => Err(format!(
                    "`{key}` must be a whole number of at least {min}, got {text:?}"
                )),
            },
        }
    }

    /// Take a string setting, if present.
    pub fn take_str(&mut self, key: &str) -> Option<String> {
        self.values.remove(key)
    }

    /// Refuse any setting that was not taken.
    pub fn finish(self) -> Result<(), String> {
        match self.values.keys().next() {
            None => Ok(()),
            Some(key) => Err(format!("{} has no setting `{key}`", self.processor)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_clearly() {
        let mut s = Settings::parse(" a=1 , b = x ", "p").unwrap();
        assert_eq!(s.take_u64("a", 5, 1), Ok(1));
        assert_eq!(s.take_u64("missing", 5, 1), Ok(5));
        assert_eq!(s.take_str("b").as_deref(), Some("x"));
        s.finish().unwrap();
        assert!(Settings::parse("a", "p")
            .unwrap_err()
            .contains("`key=value`"));
        assert!(Settings::parse("a=1,a=2", "p")
            .unwrap_err()
            .contains("twice"));
        let mut s = Settings::parse("a=0,c=1", "p").unwrap();
        assert!(s.take_u64("a", 5, 1).unwrap_err().contains("at least 1"));
        assert_eq!(s.finish().unwrap_err(), "p has no setting `c`");
    }
}
