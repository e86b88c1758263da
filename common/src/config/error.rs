//! The one error of loading a configuration: its text names the place (file, line and
//! column, or the command line) and the full key. Its own module so that the key list
//! (`keys`) and the loader (`config`) both use it without importing each other.

#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}
