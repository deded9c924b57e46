//! Run-time control of the log filter.

use std::any::Any;
use std::sync::{Arc, Mutex, PoisonError};

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::error::{Error, Result};

/// Parses an `EnvFilter` directive, mapping the error to [`Error::InvalidDirective`].
pub(crate) fn parse_filter(directive: &str) -> Result<EnvFilter> {
    EnvFilter::builder()
        .parse(directive)
        .map_err(|source| Error::InvalidDirective {
            directive: directive.to_owned(),
            source,
        })
}

/// Clone-able handle to read and replace the process-wide log filter at run time
/// (served by the admin endpoint as `GET`/`PUT /log-level`).
#[derive(Clone, Debug)]
pub struct LogLevelHandle {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The directive as last set; the lock also serialises [`set`](Self::set).
    current: Arc<Mutex<String>>,
    /// Keeps a private subscriber alive for [`detached`](Self::detached) handles.
    _keepalive: Option<Arc<dyn Any + Send + Sync>>,
}

impl LogLevelHandle {
    pub(crate) fn new(handle: reload::Handle<EnvFilter, Registry>, directive: String) -> Self {
        Self {
            handle,
            current: Arc::new(Mutex::new(directive)),
            _keepalive: None,
        }
    }

    /// A handle that controls a private, never-installed subscriber. Setting it
    /// validates directives exactly like the real one but affects no output.
    /// Meant for tests and for code paths that run without [`init`](crate::init).
    pub fn detached(directive: &str) -> Result<Self> {
        let (layer, handle) = reload::Layer::new(parse_filter(directive)?);
        let subscriber = Registry::default().with(layer);
        Ok(Self {
            handle,
            current: Arc::new(Mutex::new(directive.to_owned())),
            _keepalive: Some(Arc::new(subscriber)),
        })
    }

    /// The directive currently in effect, as it was given.
    pub fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the filter with `directive` (surrounding whitespace ignored).
    ///
    /// # Errors
    /// [`Error::InvalidDirective`] if it does not parse (or is empty), in which
    /// case the old filter stays; [`Error::Reload`] if the subscriber is gone.
    pub fn set(&self, directive: &str) -> Result<()> {
        let directive = directive.trim();
        if directive.is_empty() {
            // An empty EnvFilter would silently disable all logging.
            return Err(Error::InvalidConfig {
                name: "log filter directive".to_owned(),
                value: String::new(),
                reason: "must not be empty".to_owned(),
            });
        }
        let filter = parse_filter(directive)?;
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        self.handle.reload(filter)?;
        *current = directive.to_owned();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detached_handle_validates_and_tracks_directive() {
        let handle = LogLevelHandle::detached("info").expect("valid");
        assert_eq!(handle.current(), "info");
        handle.set("  debug,kube=warn \n").expect("valid directive");
        assert_eq!(handle.current(), "debug,kube=warn");
        let clone = handle.clone();
        assert!(matches!(
            clone.set("kube=notalevel"),
            Err(Error::InvalidDirective { .. })
        ));
        assert!(clone.set("   ").is_err());
        assert_eq!(handle.current(), "debug,kube=warn");
        assert!(LogLevelHandle::detached("=[").is_err());
    }
}
