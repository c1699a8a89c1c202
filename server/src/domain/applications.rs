//! Applications: the customer's API key identifies one.

use super::{Ctx, DomainError};
use crate::store::applications;

pub(crate) use crate::store::applications::Application;

/// The application whose API key is `api_key`, if any.
pub(crate) async fn by_api_key(
    ctx: &Ctx,
    api_key: &str,
) -> Result<Option<Application>, DomainError> {
    Ok(applications::by_api_key(&ctx.db, api_key).await?)
}
