//! How PostgreSQL plans the server's statements. Every session of the server asks for each
//! prepared statement's generic plan (`plan_cache_mode = force_generic_plan`), made once per
//! connection and reused, instead of the default, under which PostgreSQL may plan a statement
//! again for its values at every execution. The server's statements find their rows by keys
//! and indexed ranges, whose generic plans are index scans (`store::query_plans` checks both
//! kinds of plan of every hot statement); the largest of them, a new request's admission with
//! everything written with it, costs more to plan than to run. Measured in
//! docs/benchmarks.md. An operator who sets `plan_cache_mode` in the database URL's `options`
//! keeps their own.

/// The setting every session asks for.
const MODE: &str = "force_generic_plan";

/// `url` (a `postgres://` URL) with [`MODE`] added to the options its sessions start with,
/// unless it names `plan_cache_mode` itself.
pub(crate) fn postgres_url_with_generic_plans(url: &str) -> String {
    if url.contains("plan_cache_mode") {
        return url.to_string();
    }
    super::postgres_url_with_option(url, "plan_cache_mode", MODE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Database;
    use std::time::Duration;

    #[test]
    fn the_url_asks_for_generic_plans_unless_it_names_the_setting() {
        assert_eq!(
            postgres_url_with_generic_plans("postgres://u:p@h/db"),
            "postgres://u:p@h/db?options%5Bplan_cache_mode%5D=force_generic_plan"
        );
        assert_eq!(
            postgres_url_with_generic_plans(
                "postgres://u:p@h/db?options%5Bsynchronous_commit%5D=on"
            ),
            "postgres://u:p@h/db?options%5Bsynchronous_commit%5D=on\
             &options%5Bplan_cache_mode%5D=force_generic_plan"
        );
        let own = "postgres://u:p@h/db?options%5Bplan_cache_mode%5D=auto";
        assert_eq!(postgres_url_with_generic_plans(own), own);
    }

    /// A request's connection and a write transaction both plan generically; an operator's own
    /// setting in the URL is kept.
    #[tokio::test]
    async fn postgres_sessions_plan_generically_unless_the_operator_says_otherwise() {
        let Some(url) = crate::store::postgres_url_for_tests("check PostgreSQL's plan cache mode")
        else {
            return;
        };
        let modes = |url: String| async move {
            let db = Database::connect_with(&url, 2, Duration::from_secs(5), None)
                .await
                .expect("database");
            let shown = crate::store::shown_setting(&db, "plan_cache_mode").await;
            db.close().await;
            shown
        };
        let generic = MODE.to_string();
        assert_eq!(modes(url.clone()).await, (generic.clone(), generic));
        let own =
            crate::store::postgres_url_with_option(&url, "plan_cache_mode", "force_custom_plan");
        let custom = "force_custom_plan".to_string();
        assert_eq!(modes(own).await, (custom.clone(), custom));
    }
}
