//! Which points a rendered page binds: the `data-sb-point` attributes of
//! its HTML. Pure: the runtime records them per session, the loader checks
//! them against the declared points.

use super::config::is_valid_point_name;

/// The point names bound in rendered HTML (`data-sb-point="…"`), in order,
/// without repeats.
pub fn bound_points(html: &str) -> Vec<String> {
    const ATTRIBUTE: &str = "data-sb-point=\"";
    let mut names: Vec<String> = Vec::new();
    for (at, _) in html.match_indices(ATTRIBUTE) {
        let rest = &html[at + ATTRIBUTE.len()..];
        if let Some(end) = rest.find('"') {
            let name = &rest[..end];
            if is_valid_point_name(name) && !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_points_are_found_once() {
        let html = r#"<span data-sb-point="lobby.temp"></span><button data-sb-point="lobby.light" data-sb-toggle></button><i data-sb-point="lobby.temp"></i><b data-sb-point="bad name"></b>"#;
        assert_eq!(bound_points(html), ["lobby.temp", "lobby.light"]);
    }
}
