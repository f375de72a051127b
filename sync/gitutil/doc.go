// Package gitutil holds the Git plumbing shared by Herd's source follower
// (sync/source) and status writer (sync/writeback): transport authentication
// (HTTP basic and bearer, SSH keys with known_hosts checking), verification
// of OpenPGP- and SSH-signed commits against trusted keys, and signers that
// produce signatures git itself accepts.
package gitutil
