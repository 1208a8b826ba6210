//! Why a pod cannot be injected, with messages that name the annotation,
//! label or setting, the value, and what is accepted. Shared by the
//! annotation parsers, the injection core, the webhook and `meshd inject`.

use meshd_api::annotations::pod;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    /// A pod's annotation or label refused, by its parser in `meshd-api` or
    /// by the injector (a value at odds with another): one type, so the
    /// message reads the same whichever refused it.
    #[error(transparent)]
    Annotation(#[from] pod::Error),
    #[error("the pod cannot be injected: {0}")]
    InvalidPod(String),
    /// A mesh-wide setting ([`crate::config::InjectorConfig`], named as the chart names
    /// it) is invalid; see [`crate::inject::check_config`].
    #[error("injector setting {setting}: `{value}` is not valid; accepted: {accepted}")]
    InvalidConfig {
        setting: String,
        value: String,
        accepted: String,
    },
}

pub type Result<T, E = InjectError> = std::result::Result<T, E>;
