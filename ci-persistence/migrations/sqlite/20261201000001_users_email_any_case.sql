-- E-mail addresses are unique without regard to case: `UX@Example.com` is
-- the user `ux@example.com` already is. The index decides, so two admins
-- racing on one address in two spellings cannot both win.
CREATE UNIQUE INDEX users_email_any_case ON users (LOWER(email));
