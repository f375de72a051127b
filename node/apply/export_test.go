package apply

// HostNamespaces lets tests say where the host's namespaces are.
var HostNamespaces = &hostNamespaces
