-- assign-next counts a user's assignments in a campaign (protection.assigned_codes_per_user).
CREATE INDEX code_assignments_by_user ON code_assignments (campaign_id, user_id);
