"""HTTP front ends: Canyan's REST endpoints for SIP proxies and the service endpoints."""
