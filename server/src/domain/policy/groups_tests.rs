//! Users' groups replaced at once and while their user is deleted, on a real database (SQLite,
//! and PostgreSQL when `DATABASE_URL` names one): replaces take turns on the user's row, so the
//! last one stands alone (never a union past [`MAX_GROUPS`], never a clash on the primary key),
//! and groups written while the user is deleted do not outlive them.

use tessera_protocol::error::ErrorCode;
use tessera_protocol::policy::UserGroups;

use super::{MAX_GROUPS, groups, set_groups};
use crate::domain::testing::{TestDomain, joined};

/// The groups copy `copy` asks for: twenty every copy shares and twenty of its own (sorted, as
/// they are stored). Two copies together are past [`MAX_GROUPS`], and they overlap.
fn groups_of(copy: usize) -> Vec<String> {
    let mut names: Vec<String> = (0..20)
        .map(|g| format!("shared-{g:02}"))
        .chain((0..20).map(|g| format!("own-{copy}-{g:02}")))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_replaced_at_once_leave_one_set() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        for round in 0..4 {
            let user = domain.user(&format!("grace-{round}")).await;
            let tasks = (0..8)
                .map(|copy| {
                    let (ctx, app, user) =
                        (domain.ctx.clone(), domain.app.id.clone(), user.clone());
                    tokio::spawn(async move {
                        let body = UserGroups {
                            groups: groups_of(copy),
                        };
                        set_groups(&ctx, &app, &user, &body).await
                    })
                })
                .collect();
            for set in joined(tasks).await {
                // On PostgreSQL without turns, copies that overlap collide on the primary key.
                set.expect("replaced");
            }
            let stored = groups(&domain.ctx, &domain.app.id, &user)
                .await
                .expect("groups")
                .groups;
            assert!(
                stored.len() <= MAX_GROUPS,
                "{engine:?} round {round}: {}",
                stored.len()
            );
            assert!(
                (0..8).any(|copy| stored == groups_of(copy)),
                "{engine:?} round {round}: {stored:?} is no one replace's set"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_set_while_the_user_is_deleted_do_not_outlive_them() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        for round in 0..30 {
            let user = domain.user(&format!("heidi-{round}")).await;
            let (ctx, app) = (domain.ctx.clone(), domain.app.id.clone());
            let set = tokio::spawn({
                let (ctx, app, user) = (ctx.clone(), app.clone(), user.clone());
                async move {
                    let body = UserGroups {
                        groups: groups_of(0),
                    };
                    set_groups(&ctx, &app, &user, &body).await.map(drop)
                }
            });
            let removed = tokio::spawn({
                let user = user.clone();
                async move { crate::domain::devices::remove_user(&ctx, &app, &user).await }
            });
            let set = set.await.expect("the write ran");
            removed
                .await
                .expect("the deletion ran")
                .expect("the user was there to remove");
            if let Err(e) = set {
                assert_eq!(
                    e.code(),
                    Some(ErrorCode::UserNotFound),
                    "{engine:?} round {round}"
                );
            }
            assert_eq!(
                domain.rows_of("user_groups", &user).await,
                0,
                "{engine:?} round {round}: groups outlived the user"
            );
        }
    }
}
