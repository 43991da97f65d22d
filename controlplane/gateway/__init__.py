"""The gateway's control-plane half: teams, virtual keys, prices and the audit log, kept in
the store, set through AdminService and streamed to edges by PolicyService."""
