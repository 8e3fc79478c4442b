/* Private to view/: growing the node table while the view is built.
 * Every function returns 0 or FZ_ENOMEM (or FZ_EINVAL for a name clash). */
#ifndef FZ_VIEW_TREE_H
#define FZ_VIEW_TREE_H

#include "view/internal.h"

/* Add a directory `name` under `parent` (UINT32_MAX for the root itself). */
int fz_tree_dir(fz_view *v, uint32_t parent, const char *name, uint32_t *out);
/* Add a file made of one literal buffer; takes ownership of data (malloc'd). */
int fz_tree_literal(fz_view *v, uint32_t parent, const char *name, uint8_t *data, uint64_t len);
/* Add a file that is a whole source file (held open), with its permission
 * bits; other nodes get v->dir_mode / v->file_mode. */
int fz_tree_span_file(fz_view *v, uint32_t parent, const char *name, const char *src_path);
/* Add a file with the given segments (copied; offsets filled in order). */
int fz_tree_file(fz_view *v, uint32_t parent, const char *name, const fz_seg *segs, uint32_t n,
                 uint32_t *out);
int fz_tree_symlink(fz_view *v, uint32_t parent, const char *name, const char *target);
/* Keep a literal buffer alive with the view (takes ownership). */
int fz_tree_keep(fz_view *v, uint8_t *data);
/* Sort every directory's children by name; FZ_EINVAL when two children of
 * one directory have the same name. Computes nothing else. */
int fz_tree_finish(fz_view *v);

#endif
