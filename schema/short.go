package schema

// ShortLen is how many characters of a hash (config hash, OSTree commit,
// Git commit) people see: in plans, status, events, logs and history.
const ShortLen = 8

// Short returns the first ShortLen characters of a hash, or all of a
// shorter string.
func Short(hash string) string {
	if len(hash) > ShortLen {
		return hash[:ShortLen]
	}
	return hash
}
