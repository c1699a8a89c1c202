-- Whether a group a policy names has any member (a policy naming a group nobody is in fails
-- closed): one look-up per name over this index. Without it the check read every group
-- membership of the application, on every decision.
CREATE INDEX user_groups_by_group ON user_groups (application_id, group_name);
