//! Pieces of an AdmissionReview answer that the mutating (injection) and
//! validating (routing annotations) handlers share.

use kube::core::admission::AdmissionResponse;
use kube::core::{GroupVersionKind, Status};

/// A value from the request as quoted in a message: never more than a
/// line, whatever the client sent.
pub(crate) fn short(value: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 63;
    match value.char_indices().nth(MAX) {
        None => value.into(),
        Some((end, _)) => format!("{}…", &value[..end]).into(),
    }
}

pub(crate) fn gvk_name(gvk: &GroupVersionKind) -> String {
    if gvk.group.is_empty() {
        format!("{} {}", short(&gvk.version), short(&gvk.kind))
    } else {
        format!(
            "{}/{} {}",
            short(&gvk.group),
            short(&gvk.version),
            short(&gvk.kind)
        )
    }
}

pub(crate) fn deny(
    mut response: AdmissionResponse,
    code: u16,
    reason: &str,
    message: String,
) -> AdmissionResponse {
    response.allowed = false;
    response.result = Status::failure(&message, reason).with_code(code);
    response
}
