//! Why a pod cannot be injected, with messages that name the annotation,
//! label or setting, the value, and what is accepted. Shared by the
//! annotation parsers, the injection core, the webhook and `meshd inject`.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    #[error("annotation {annotation}: `{value}` is not valid; accepted: {accepted}")]
    InvalidAnnotation {
        annotation: String,
        value: String,
        accepted: String,
    },
    #[error("annotation {annotation} is not a meshd annotation; accepted: {accepted}")]
    UnknownAnnotation {
        annotation: String,
        accepted: String,
    },
    #[error("label {label}: `{value}` is not valid; accepted: {accepted}")]
    InvalidLabel {
        label: String,
        value: String,
        accepted: String,
    },
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

/// A pod's annotations or labels refused by their parser (`meshd-api`),
/// with the same message.
impl From<meshd_api::annotations::pod::Error> for InjectError {
    fn from(e: meshd_api::annotations::pod::Error) -> Self {
        use meshd_api::annotations::pod::Error;
        match e {
            Error::InvalidAnnotation {
                annotation,
                value,
                accepted,
            } => InjectError::InvalidAnnotation {
                annotation,
                value,
                accepted,
            },
            Error::UnknownAnnotation {
                annotation,
                accepted,
            } => InjectError::UnknownAnnotation {
                annotation,
                accepted,
            },
            Error::InvalidLabel {
                label,
                value,
                accepted,
            } => InjectError::InvalidLabel {
                label,
                value,
                accepted,
            },
        }
    }
}
