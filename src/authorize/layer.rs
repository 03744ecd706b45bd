use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::RequireScopesService;
use crate::reject::Responder;
use crate::scope::{Scope, ScopeError, ScopeSet};

/// Requires scopes of the authenticated key; see the [module docs](super).
///
/// It wraps any service, `Clone` or not: it decides before calling the
/// inner service, without waiting.
#[derive(Clone)]
#[must_use]
pub struct RequireScopes {
    pub(crate) policy: Arc<Policy>,
    pub(crate) responder: Responder,
}

/// What a route requires.
pub(crate) struct Policy {
    pub(crate) mode: Mode,
    pub(crate) scopes: ScopeSet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    All,
    Any,
}

impl RequireScopes {
    /// Admits a key granted every one of `scopes`. With no scopes it admits
    /// every authenticated key.
    pub fn all(scopes: impl IntoIterator<Item = Scope>) -> Self {
        Self::new(Mode::All, scopes.into_iter().collect())
    }

    /// Admits a key granted at least one of `scopes`. With no scopes it
    /// admits nothing: every request is refused with `403`.
    pub fn any(scopes: impl IntoIterator<Item = Scope>) -> Self {
        Self::new(Mode::Any, scopes.into_iter().collect())
    }

    /// [`all`](Self::all), parsing each string as a [`Scope`].
    pub fn try_all<I>(scopes: I) -> Result<Self, ScopeError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        Ok(Self::new(Mode::All, ScopeSet::parse(scopes)?))
    }

    /// [`any`](Self::any), parsing each string as a [`Scope`].
    pub fn try_any<I>(scopes: I) -> Result<Self, ScopeError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        Ok(Self::new(Mode::Any, ScopeSet::parse(scopes)?))
    }

    fn new(mode: Mode, scopes: ScopeSet) -> Self {
        Self {
            policy: Arc::new(Policy { mode, scopes }),
            responder: Responder::default(),
        }
    }

    /// Answers refusals with `responder` (default: problem details with
    /// realm `"api"`; use the same one as your `AuthLayer`).
    pub fn responder(mut self, responder: Responder) -> Self {
        self.responder = responder;
        self
    }

    /// The scopes this layer requires (all of them, or one of them).
    pub fn scopes(&self) -> &ScopeSet {
        &self.policy.scopes
    }

    /// Whether one of the scopes suffices (`any`) rather than all.
    pub fn is_any(&self) -> bool {
        self.policy.mode == Mode::Any
    }
}

impl Policy {
    /// `None` when `granted` satisfies the policy; otherwise the scopes to
    /// name in the refusal: the missing ones (`all`) or the alternatives
    /// (`any`).
    pub(crate) fn refusal(&self, granted: &ScopeSet) -> Option<ScopeSet> {
        match self.mode {
            Mode::All => {
                if self.scopes.iter().all(|s| granted.grants(s)) {
                    None
                } else {
                    Some(
                        self.scopes
                            .iter()
                            .filter(|s| !granted.grants(s))
                            .cloned()
                            .collect(),
                    )
                }
            }
            Mode::Any => {
                if self.scopes.iter().any(|s| granted.grants(s)) {
                    None
                } else {
                    Some(self.scopes.clone())
                }
            }
        }
    }
}

impl fmt::Debug for RequireScopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireScopes")
            .field("mode", &self.policy.mode)
            .field("scopes", &self.policy.scopes)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for RequireScopes {
    type Service = RequireScopesService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireScopesService::new(inner, self.clone())
    }
}
