"""The gateway: HTTP, tenants and the request pipeline."""
