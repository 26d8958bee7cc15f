// Package auth knows who is calling the gateway: users and groups from a
// users file (bcrypt passwords, API keys), signed session cookies for the
// dashboard, and identities asserted by a trusted reverse proxy.
package auth

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// AdminGroup is the group whose members administer the gateway.
const AdminGroup = "admin"

// CookieName is the dashboard's session cookie.
const CookieName = "wsgw_session"

// Kinds of identity. Identities of different kinds are never equal (see
// Identity.Key): a users-file account named "admin" is not the security
// token's holder, and a proxy's "alice" is not the users file's.
const (
	KindUser     = "user"     // the users file: password, API key, cookie
	KindProxy    = "proxy"    // asserted by a --trusted_proxy
	KindToken    = "token"    // the --security_token
	KindLoopback = "loopback" // a local administrator without credentials
)

// Identity is an authenticated caller.
type Identity struct {
	Name   string   `json:"user"`
	Groups []string `json:"groups"`
	Admin  bool     `json:"admin"`
	// Kind is where the identity comes from: user, proxy, token,
	// loopback.
	Kind string `json:"kind,omitempty"`
	// Via says how the caller proved it: basic, api_key, cookie, proxy,
	// security_token, loopback.
	Via string `json:"via"`
}

// Key is the identity as an owner of reservations, sessions and jobs:
// the user name for users-file users (whose names cannot hold ':'), the
// kind and the name for the others ("proxy:alice", "token:admin"), and
// "" (no owner) for nil and loopback administrators.
func (id *Identity) Key() string {
	if id == nil {
		return ""
	}
	switch id.Kind {
	case KindUser:
		return id.Name
	case KindLoopback, "":
		return ""
	}
	return id.Kind + ":" + id.Name
}

// InGroup reports membership (admins are members of every group).
func (id *Identity) InGroup(g string) bool {
	if id == nil {
		return false
	}
	return id.Admin || slices.Contains(id.Groups, g)
}

// User is one entry of the users file.
type User struct {
	PasswordBcrypt string   `json:"password_bcrypt"`
	APIKeys        []string `json:"api_keys"`
	Groups         []string `json:"groups"`
}

type usersFile struct {
	Users map[string]User `json:"users"`
}

type table struct {
	users map[string]User
	keys  map[[32]byte]string // sha256(api key) → user
	mod   time.Time
	size  int64
}

// Users is the users file, reloaded when it changes. It is safe for
// concurrent use.
type Users struct {
	path   string
	cur    atomic.Pointer[table]
	secret [32]byte // signs session cookies

	cacheMu   sync.Mutex
	cache     map[[32]byte]time.Time // sha256(user \0 password) → good until
	notBefore map[string]int64       // user → cookies issued until then are void (logout)
	now       func() time.Time       // the clock (tests set it)
}

// MaxUsersFileBytes bounds the users file.
const MaxUsersFileBytes = 4 << 20

// LoadUsers reads the users file.
func LoadUsers(path string) (*Users, error) {
	u := &Users{path: path, cache: map[[32]byte]time.Time{}, now: time.Now}
	if _, err := rand.Read(u.secret[:]); err != nil {
		return nil, fmt.Errorf("session key: %w", err)
	}
	t, err := readTable(path)
	if err != nil {
		return nil, err
	}
	u.cur.Store(t)
	return u, nil
}

func readTable(path string) (*table, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("users file %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("users file %s: %w", path, err)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxUsersFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("users file %s: %w", path, err)
	}
	if len(data) > MaxUsersFileBytes {
		return nil, fmt.Errorf("users file %s: larger than %d bytes", path, MaxUsersFileBytes)
	}
	var uf usersFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&uf); err != nil {
		return nil, fmt.Errorf("users file %s: %w; expected {\"users\": {\"alice\": {\"password_bcrypt\": \"$2a$…\", \"api_keys\": [\"…\"], \"groups\": [\"viz\"]}}}", path, err)
	}
	if uf.Users == nil {
		return nil, fmt.Errorf("users file %s: no \"users\" object", path)
	}
	t := &table{users: uf.Users, keys: map[[32]byte]string{}, mod: st.ModTime(), size: st.Size()}
	for name, usr := range uf.Users {
		if name == "" || strings.ContainsAny(name, ":\x00\n") || len(name) > 128 {
			return nil, fmt.Errorf("users file %s: user name %q: must be 1-128 characters without ':' or control characters", path, name)
		}
		if usr.PasswordBcrypt != "" {
			if _, err := bcrypt.Cost([]byte(usr.PasswordBcrypt)); err != nil {
				return nil, fmt.Errorf("users file %s: user %q: key \"password_bcrypt\": not a bcrypt hash (make one with: wsgateway hash-password)", path, name)
			}
		}
		for i, k := range usr.APIKeys {
			if len(k) < 16 {
				return nil, fmt.Errorf("users file %s: user %q: api_keys[%d]: shorter than 16 characters; use a long random key", path, name, i)
			}
			h := sha256.Sum256([]byte(k))
			if other, dup := t.keys[h]; dup {
				return nil, fmt.Errorf("users file %s: users %q and %q share an API key", path, other, name)
			}
			t.keys[h] = name
		}
	}
	return t, nil
}

// Reload rereads the file; on error the previous users stay in force.
func (u *Users) Reload() error {
	t, err := readTable(u.path)
	if err != nil {
		return err
	}
	u.cur.Store(t)
	u.cacheMu.Lock()
	clear(u.cache)
	u.cacheMu.Unlock()
	return nil
}

// Changed reports whether the file's size or time differ from what was
// loaded.
func (u *Users) Changed() bool {
	st, err := os.Stat(u.path)
	if err != nil {
		return false
	}
	t := u.cur.Load()
	return !st.ModTime().Equal(t.mod) || st.Size() != t.size
}

// Count is the number of users.
func (u *Users) Count() int { return len(u.cur.Load().users) }

// Path is the users file.
func (u *Users) Path() string { return u.path }

func (u *Users) identity(name, via string) *Identity {
	usr, ok := u.cur.Load().users[name]
	if !ok {
		return nil
	}
	return &Identity{Name: name, Groups: append([]string(nil), usr.Groups...), Admin: slices.Contains(usr.Groups, AdminGroup), Kind: KindUser, Via: via}
}

// Lookup returns the current identity of a user (nil if the user is gone).
func (u *Users) Lookup(name string) *Identity { return u.identity(name, "lookup") }

// ErrBadCredentials is a wrong user, password, key or cookie.
var ErrBadCredentials = errors.New("wrong user name, password or API key")

// CheckPassword verifies a user's password (bcrypt, with a short cache of
// successes so HTTP Basic clients do not pay bcrypt on every request).
func (u *Users) CheckPassword(name, password string) (*Identity, error) {
	usr, ok := u.cur.Load().users[name]
	key := sha256.Sum256([]byte(name + "\x00" + password))
	u.cacheMu.Lock()
	until, hit := u.cache[key]
	u.cacheMu.Unlock()
	if ok && hit && time.Now().Before(until) {
		return u.identity(name, "basic"), nil
	}
	hash := usr.PasswordBcrypt
	if !ok || hash == "" {
		// Spend the same time as a real check.
		_ = bcrypt.CompareHashAndPassword(dummyHash(), []byte(password))
		return nil, ErrBadCredentials
	}
	if err := bcrypt.CompareHashAndPassword([]byte(hash), []byte(password)); err != nil {
		return nil, ErrBadCredentials
	}
	u.cacheMu.Lock()
	if len(u.cache) > 10000 {
		clear(u.cache)
	}
	u.cache[key] = time.Now().Add(time.Minute)
	u.cacheMu.Unlock()
	return u.identity(name, "basic"), nil
}

// dummyHash is made on first use, not at start-up: every service
// supervisor is this binary too, and must not pay for a bcrypt hash.
var dummyHash = sync.OnceValue(func() []byte {
	h, _ := bcrypt.GenerateFromPassword([]byte("wsgateway-dummy"), bcrypt.DefaultCost)
	return h
})

// CheckAPIKey finds the user of an API key.
func (u *Users) CheckAPIKey(key string) (*Identity, error) {
	name, ok := u.cur.Load().keys[sha256.Sum256([]byte(key))]
	if !ok {
		return nil, ErrBadCredentials
	}
	return u.identity(name, "api_key"), nil
}

// SessionCookie makes a signed cookie value for name, valid for ttl. It
// ends earlier when the user's password changes, the user is removed,
// or EndSessions is called for the user (logout).
func (u *Users) SessionCookie(name string, ttl time.Duration) string {
	now := u.now()
	payload := strings.Join([]string{
		base64.RawURLEncoding.EncodeToString([]byte(name)),
		strconv.FormatInt(now.Add(ttl).Unix(), 10),
		strconv.FormatInt(now.UnixNano(), 10),
		u.generation(name),
	}, ".")
	return payload + "." + u.sign(payload)
}

// generation changes when the user's password changes: a digest of the
// stored hash (and nothing for a user without a password).
func (u *Users) generation(name string) string {
	usr, ok := u.cur.Load().users[name]
	if !ok {
		return "-"
	}
	h := sha256.Sum256([]byte("wsgateway-cookie\x00" + usr.PasswordBcrypt))
	return base64.RawURLEncoding.EncodeToString(h[:9])
}

// EndSessions ends every session cookie of name issued until now (the
// dashboard's logout: it logs the user out in every browser).
func (u *Users) EndSessions(name string) {
	u.cacheMu.Lock()
	defer u.cacheMu.Unlock()
	if u.notBefore == nil {
		u.notBefore = map[string]int64{}
	}
	// Only a user's own valid cookie gets here (logout): one entry per
	// user at most.
	u.notBefore[name] = u.now().UnixNano()
}

func (u *Users) sign(payload string) string {
	m := hmac.New(sha256.New, u.secret[:])
	m.Write([]byte(payload))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// CheckCookie verifies a session cookie value: its signature, expiry,
// the user's current password generation and the user's last logout.
func (u *Users) CheckCookie(v string) (*Identity, error) {
	i := strings.LastIndexByte(v, '.')
	if i < 0 {
		return nil, ErrBadCredentials
	}
	payload, sig := v[:i], v[i+1:]
	if subtle.ConstantTimeCompare([]byte(sig), []byte(u.sign(payload))) != 1 {
		return nil, ErrBadCredentials
	}
	parts := strings.Split(payload, ".")
	if len(parts) != 4 {
		return nil, ErrBadCredentials
	}
	exp, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil || u.now().Unix() > exp {
		return nil, ErrBadCredentials
	}
	issued, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil {
		return nil, ErrBadCredentials
	}
	name, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return nil, ErrBadCredentials
	}
	if parts[3] != u.generation(string(name)) {
		return nil, ErrBadCredentials // the password changed
	}
	u.cacheMu.Lock()
	nb, loggedOut := u.notBefore[string(name)]
	u.cacheMu.Unlock()
	if loggedOut && issued <= nb {
		return nil, ErrBadCredentials
	}
	id := u.identity(string(name), "cookie")
	if id == nil {
		return nil, ErrBadCredentials
	}
	return id, nil
}

// authenticate looks for the users file's ambient credentials in r (HTTP
// Basic, then a session cookie) and returns, with the identity, a check
// that they still hold (see Caller.Valid). It returns nil, nil, nil when
// r carries none, and ErrBadCredentials when they are wrong. API keys,
// which are explicit credentials, are Policy.Caller's, before this.
func (u *Users) authenticate(r *http.Request) (*Identity, func() bool, error) {
	if u == nil {
		return nil, nil, nil
	}
	if name, pw, ok := r.BasicAuth(); ok {
		id, err := u.CheckPassword(name, pw)
		if err != nil {
			return nil, nil, err
		}
		gen := u.generation(name)
		return id, func() bool { return u.generation(name) == gen && u.same(id) }, nil
	}
	if c, err := r.Cookie(CookieName); err == nil && c.Value != "" {
		id, err := u.CheckCookie(c.Value)
		if err != nil {
			return nil, nil, err
		}
		v := c.Value
		return id, func() bool { now, err := u.CheckCookie(v); return err == nil && sameRights(id, now) }, nil
	}
	return nil, nil, nil
}

// same reports whether id's user is still in the file with the same
// rights.
func (u *Users) same(id *Identity) bool { return sameRights(id, u.Lookup(id.Name)) }

// sameRights: now is the same user as was, in the same groups.
func sameRights(was, now *Identity) bool {
	return now != nil && was.Name == now.Name && was.Admin == now.Admin && slices.Equal(was.Groups, now.Groups)
}

// TrustedProxies is the --trusted_proxy networks whose X-Forwarded-User
// and X-Forwarded-Groups headers are believed.
type TrustedProxies []*net.IPNet

// ParseCIDRs parses CIDRs (a bare IP is a /32 or /128).
func ParseCIDRs(list []string) (TrustedProxies, error) {
	var out TrustedProxies
	for _, s := range list {
		if !strings.Contains(s, "/") {
			if ip := net.ParseIP(s); ip != nil && ip.To4() != nil {
				s += "/32"
			} else {
				s += "/128"
			}
		}
		_, n, err := net.ParseCIDR(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not a network (write it as 10.0.0.0/8 or an address): %w", s, err)
		}
		out = append(out, n)
	}
	return out, nil
}

// HasLoopback reports whether a network holds a loopback address.
func (t TrustedProxies) HasLoopback() bool {
	for _, n := range t {
		if n.Contains(net.IPv4(127, 0, 0, 1)) || n.Contains(net.IPv6loopback) || n.IP.IsLoopback() {
			return true
		}
	}
	return false
}

// contains reports whether ip is in one of the networks.
func (t TrustedProxies) contains(ip net.IP) bool {
	if ip == nil {
		return false
	}
	for _, n := range t {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

// clientFor is the client behind a trusted proxy: the rightmost address
// of X-Forwarded-For that is not itself a trusted proxy (the hops to its
// left were written by whoever sent the request, and can be anything).
// With no usable header it is the proxy's own address, peer.
func (t TrustedProxies) clientFor(r *http.Request, peer string) string {
	var hops []string
	for _, v := range r.Header.Values("X-Forwarded-For") {
		hops = append(hops, strings.Split(v, ",")...)
	}
	for i := len(hops) - 1; i >= 0; i-- {
		ip := net.ParseIP(strings.TrimSpace(hops[i]))
		if ip == nil {
			return peer // a hop we cannot read: stop at what we know
		}
		if !t.contains(ip) {
			return ip.String()
		}
	}
	return peer
}

// assertedIdentity is the identity a trusted proxy asserts in r's
// X-Forwarded-User and X-Forwarded-Groups (nil: none). The caller has
// checked that r's peer is a trusted proxy.
func assertedIdentity(r *http.Request) *Identity {
	user := strings.TrimSpace(r.Header.Get("X-Forwarded-User"))
	if user == "" || len(user) > 128 || strings.ContainsFunc(user, isControl) {
		return nil
	}
	var groups []string
	for _, g := range strings.Split(r.Header.Get("X-Forwarded-Groups"), ",") {
		if g = strings.TrimSpace(g); g != "" {
			groups = append(groups, g)
		}
	}
	return &Identity{Name: user, Groups: groups, Admin: slices.Contains(groups, AdminGroup), Kind: KindProxy, Via: "proxy"}
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// HashPassword returns a bcrypt hash of password.
func HashPassword(password string) (string, error) {
	if len(password) < 8 {
		return "", errors.New("password shorter than 8 characters")
	}
	if len(password) > 72 {
		return "", errors.New("password longer than 72 bytes (bcrypt's limit)")
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.DefaultCost)
	if err != nil {
		return "", fmt.Errorf("hashing: %w", err)
	}
	return string(h), nil
}
