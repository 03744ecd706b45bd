use std::sync::Arc;

use tower_layer::Layer;

use super::method::{MethodPatternError, MethodTable};
use super::MethodScopes;
use crate::reject::Responder;
use crate::scope::ScopeSet;

/// Requires scopes per gRPC method; see the [module docs](super).
///
/// Put it inside [`AuthLayer`](crate::AuthLayer), which supplies the
/// [`Principal`](crate::Principal) whose scopes it checks. It wraps any
/// service, `Clone` or not: it decides before calling the inner service,
/// without waiting.
#[derive(Debug, Clone)]
#[must_use]
pub struct MethodScopesLayer {
    config: Arc<MethodScopesConfig>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct MethodScopesConfig {
    pub(crate) table: MethodTable,
    pub(crate) responder: Responder,
}

impl MethodScopesLayer {
    /// No method listed yet: every method is refused until listed (deny
    /// unlisted, the secure default).
    pub fn new() -> Self {
        Self {
            config: Arc::new(MethodScopesConfig::default()),
        }
    }

    /// Requires every scope of `scopes` for the methods `pattern` matches:
    /// `/package.Service/Method`, or `/package.Service/*` for all methods
    /// of a service. A method's own pattern wins over its service's. An
    /// empty `scopes` admits any authenticated key.
    ///
    /// # Errors
    ///
    /// [`MethodPatternError`] if `pattern` is malformed or already listed.
    pub fn method(mut self, pattern: &str, scopes: ScopeSet) -> Result<Self, MethodPatternError> {
        Arc::make_mut(&mut self.config)
            .table
            .insert(pattern, scopes)?;
        Ok(self)
    }

    /// Methods that no pattern matches require `scopes`, instead of being
    /// refused.
    ///
    /// **Weaker than the default**: a method added to the server later is
    /// reachable with these scopes without being listed here. With an
    /// empty set, any authenticated key may call every unlisted method.
    pub fn allow_unlisted(mut self, scopes: ScopeSet) -> Self {
        Arc::make_mut(&mut self.config).table.unlisted = Some(scopes);
        self
    }

    /// Answers rejections with `responder` (its HTTP answer is used for
    /// requests that are not gRPC).
    pub fn responder(mut self, responder: Responder) -> Self {
        Arc::make_mut(&mut self.config).responder = responder;
        self
    }

    /// The scopes a call to `path` (`/package.Service/Method`) requires;
    /// `None` if it is refused whatever the key holds.
    pub fn required_scopes(&self, path: &str) -> Option<&ScopeSet> {
        self.config.table.lookup(path)
    }
}

impl Default for MethodScopesLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for MethodScopesLayer {
    type Service = MethodScopes<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MethodScopes::new(inner, Arc::clone(&self.config))
    }
}
