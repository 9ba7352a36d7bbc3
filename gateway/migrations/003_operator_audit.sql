-- Issue 11: the operators' controls of the registry (catalog, suspensions,
-- trust, provider tokens, banned endpoints) are admin actions too.
ALTER TABLE gateway.audit DROP CONSTRAINT audit_action_check;
ALTER TABLE gateway.audit ADD CONSTRAINT audit_action_check CHECK (action IN (
    'create_account', 'create_key', 'revoke_key', 'topup', 'payout',
    'put_catalog_model', 'remove_catalog_model', 'suspend_node', 'unsuspend_node', 'suspend_provider',
    'unsuspend_provider', 'trust_provider', 'untrust_provider', 'rotate_provider_token', 'revoke_provider_token',
    'ban_endpoint', 'unban_endpoint'));
