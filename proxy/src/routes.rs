//! Splitting a gateway path into the function name and the path the function sees.

/// A request path under the gateway prefix, split.
#[derive(Debug, PartialEq, Eq)]
pub struct Route<'a> {
    /// The function's name.
    pub name: &'a str,
    /// What follows the name, starting with `/` (or empty when nothing follows).
    pub rest: &'a str,
}

/// Splits `/gateway/{name}/{rest}` given the prefix `/gateway`. `None` when the path is not
/// under the prefix or names no function.
pub fn split<'a>(prefix: &str, path: &'a str) -> Option<Route<'a>> {
    let after = path.strip_prefix(prefix)?.strip_prefix('/')?;
    let (name, rest) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, ""),
    };
    (!name.is_empty()).then_some(Route { name, rest })
}

/// The path and query the function sees: `rest` (or `/`) followed by `?query` when there is one.
pub fn upstream_path(rest: &str, query: Option<&str>) -> String {
    let path = if rest.is_empty() { "/" } else { rest };
    match query {
        Some(q) => {
            let mut s = String::with_capacity(path.len() + 1 + q.len());
            s.push_str(path);
            s.push('?');
            s.push_str(q);
            s
        }
        None => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_name_and_rest() {
        assert_eq!(
            split("/gateway", "/gateway/service-x/echo/"),
            Some(Route {
                name: "service-x",
                rest: "/echo/"
            })
        );
        assert_eq!(
            split("/gateway", "/gateway/f"),
            Some(Route {
                name: "f",
                rest: ""
            })
        );
        assert_eq!(
            split("/gateway", "/gateway/f/"),
            Some(Route {
                name: "f",
                rest: "/"
            })
        );
        assert_eq!(split("/gateway", "/gateway/"), None);
        assert_eq!(split("/gateway", "/gatewayx/f"), None);
        assert_eq!(split("/gateway", "/other"), None);
    }

    #[test]
    fn keeps_the_query() {
        assert_eq!(upstream_path("/echo/", Some("a=1&b=2")), "/echo/?a=1&b=2");
        assert_eq!(upstream_path("", None), "/");
        assert_eq!(upstream_path("", Some("x")), "/?x");
    }
}
