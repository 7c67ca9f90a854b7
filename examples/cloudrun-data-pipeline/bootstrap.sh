#!/bin/sh
# The guide's bootstrap call after a deployment. It is idempotent (nothing is recreated), so it
# runs after every deployment, not only the first; the engine gives the service's URL.
# ADMIN_API_KEY comes from the CI job (the guide keeps it in Secret Manager as
# admin-api-key-ENV: `gcloud secrets versions access latest --secret=admin-api-key-prod`).
set -eu
: "${ADMIN_API_KEY:?set ADMIN_API_KEY to the admin key (Secret Manager: admin-api-key-ENV)}"
curl -fsS -X POST "$ENGINE_SERVICE_URL/api/v1/admin/bootstrap" \
  -H "X-Admin-Key: $ADMIN_API_KEY" \
  -H 'Content-Type: application/json' \
  -d '{"force_recreate_dataset": false, "force_recreate_tables": false}'
echo
