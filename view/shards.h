/* Private to view/: the node tree of a view (root files, weight shards,
 * indexes, manifest, symlinks). */
#ifndef FZ_VIEW_SHARDS_H
#define FZ_VIEW_SHARDS_H

#include "view/internal.h"

/* Build every node of v from its source, meta and recipes. */
int fz_view_build_tree(fz_view *v);

#endif
