package cluster

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/schema"
)

// EnsureRendered stores a render as its immutable ConfigMap, if missing.
func EnsureRendered(ctx context.Context, c client.Client, rd *schema.Rendered, hash string) error {
	data, err := schema.MarshalRendered(rd)
	if err != nil {
		return err
	}
	immutable := true
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{
			Name:      schema.RenderedName(hash),
			Namespace: schema.RenderedNamespace,
			Labels:    map[string]string{schema.LabelRendered: "true"},
		},
		Immutable:  &immutable,
		BinaryData: nil,
		Data:       map[string]string{schema.RenderedDataKey: string(data)},
	}
	if err := c.Create(ctx, cm); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("store rendered config %s: %w", schema.Short(hash), err)
	}
	return nil
}

// CollectRendered deletes rendered ConfigMaps no longer needed: not in keep
// (the hashes nodes and recent revisions refer to) and older than minAge, so
// a render stored a moment ago for a node not yet annotated survives.
func CollectRendered(ctx context.Context, c client.Client, keep map[string]bool, minAge time.Duration, now time.Time) ([]string, error) {
	var list corev1.ConfigMapList
	if err := c.List(ctx, &list, client.InNamespace(schema.RenderedNamespace), client.MatchingLabels{schema.LabelRendered: "true"}); err != nil {
		return nil, fmt.Errorf("list rendered configs: %w", err)
	}
	var deleted []string
	for i := range list.Items {
		cm := &list.Items[i]
		hash := strings.TrimPrefix(cm.Name, schema.RenderedPrefix)
		if keep[hash] || now.Sub(cm.CreationTimestamp.Time) < minAge {
			continue
		}
		if err := c.Delete(ctx, cm); err != nil && !apierrors.IsNotFound(err) {
			return deleted, fmt.Errorf("delete rendered config %s: %w", cm.Name, err)
		}
		deleted = append(deleted, hash)
	}
	return deleted, nil
}
