package gitutil

import (
	"net/url"
	"strings"
)

// RedactURL returns the URL of a remote without its credentials, for
// status and logs: the user info of http(s) URLs (a token is often the
// user name) and the password of other URLs, and the values of its query.
// Scp-like addresses (git@host:path) hold no secret and are returned as is.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" || u.Host == "" {
		if i := strings.Index(raw, "://"); i >= 0 {
			// Not parseable but URL-shaped: drop anything before the host.
			rest := raw[i+3:]
			if at := strings.LastIndex(strings.SplitN(rest, "/", 2)[0], "@"); at >= 0 {
				return raw[:i+3] + "redacted@" + rest[at+1:]
			}
		}
		return raw
	}
	if u.User != nil {
		switch {
		case u.Scheme == "http" || u.Scheme == "https":
			u.User = url.User("redacted")
		default:
			u.User = url.User(u.User.Username())
		}
	}
	if u.RawQuery != "" {
		q := u.Query()
		for k := range q {
			q.Set(k, "redacted")
		}
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// Scrub removes the credentials of the remote raw from text (an error
// message that may quote the URL, or its user info).
func Scrub(text, raw string) string {
	if raw == "" {
		return text
	}
	text = strings.ReplaceAll(text, raw, RedactURL(raw))
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok && pw != "" {
			text = strings.ReplaceAll(text, pw, "redacted")
		}
		if u.Scheme == "http" || u.Scheme == "https" {
			if name := u.User.Username(); len(name) >= 8 { // a token, not a login like "git"
				text = strings.ReplaceAll(text, name, "redacted")
			}
		}
	}
	return text
}
