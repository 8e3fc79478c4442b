/* `fzfs plan` and `--dry-run`: what the view holds and why. */
#include <string.h>

#include "formats/jsonout.h"
#include "util/error.h"
#include "view/internal.h"

static const char *op_of(const fz_view *v, const fz_recipe *r)
{
    (void)v;
    if (r->part == FZ_PART_QWEIGHT)
        return r->cast ? "cast+quantize" : "quantize";
    if (r->part == FZ_PART_QSCALE)
        return "quant-scale";
    if (r->part == FZ_PART_CONST)
        return "constant";
    if (fz_recipe_is_span(r, NULL))
        return "copy";
    if (r->resize)
        return r->cast ? "resize+cast" : "resize";
    if (r->cast)
        return r->gather ? "gather+cast" : "cast";
    return "gather";
}

static const char *seg_kind(const fz_view *v, uint32_t i, const char **whole)
{
    const fz_node *n = &v->nodes[i];
    int fd;
    *whole = NULL;
    if (fz_view_backing(v, i, &fd, whole))
        return "whole";
    bool lit = false, span = false, comp = false;
    for (uint32_t i = 0; i < n->nsegs; i++) {
        lit |= n->segs[i].kind == FZ_SEG_LITERAL || n->segs[i].kind == FZ_SEG_DEFERRED;
        span |= n->segs[i].kind == FZ_SEG_SPAN;
        comp |= n->segs[i].kind == FZ_SEG_COMPUTED;
    }
    if (comp)
        return "computed";
    if (span && lit)
        return "generated+copied";
    if (span)
        return "copied";
    return "generated";
}

/* s left-aligned in a field of `width` bytes, as printf's %-*s. */
static int put_field(fz_buf *b, const char *s, size_t len, size_t width)
{
    size_t pad = len < width ? width - len : 0;
    int rc = fz_buf_reserve(b, len + pad + 1);
    if (rc == 0) {
        memcpy(b->data + b->len, s, len);
        memset(b->data + b->len + len, ' ', pad);
        b->len += len + pad;
        b->data[b->len] = 0; /* a fz_buf stays NUL-terminated */
    }
    return rc;
}

/* One line of the tensor table (built by hand: printf's formatting was
 * most of `fzfs plan`'s output time at 100k tensors). */
static int tensor_line(const fz_view *v, const fz_outtensor *o, fz_buf *line, fz_buf *shape)
{
    const fz_recipe *r = &v->recipes[o->recipe];
    const char *dt = fz_dtype_torch_name(r->out_dtype), *op = o->alias ? "alias" : op_of(v, r);
    int rc = fz_buf_putc(shape, '[');
    for (int i = 0; i < r->ndim && rc == 0; i++)
        if ((rc = i ? fz_buf_append(shape, ", ", 2) : 0) == 0)
            rc = fz_buf_put_dec(shape, r->shape[i]);
    if (rc || (rc = fz_buf_putc(shape, ']')) || (rc = fz_buf_append(line, "  ", 2)) ||
        (rc = put_field(line, o->name, strlen(o->name), 52)) || (rc = fz_buf_putc(line, ' ')) ||
        (rc = put_field(line, dt, strlen(dt), 9)) || (rc = fz_buf_putc(line, ' ')) ||
        (rc = put_field(line, (const char *)shape->data, shape->len, 16)) ||
        (rc = fz_buf_putc(line, ' ')) || (rc = put_field(line, op, strlen(op), 12)))
        return rc;
    if (o->role && ((rc = fz_buf_append(line, " (", 2)) || (rc = fz_buf_puts(line, o->role)) ||
                    (rc = fz_buf_putc(line, ')'))))
        return rc;
    return fz_buf_putc(line, '\n');
}

int fz_view_plan_text(const fz_view *v, FILE *f)
{
    const fz_meta_out *m = &v->meta;
    const fz_source *s = &v->src;
    fprintf(f, "Source:      %s\n", s->root);
    fprintf(f, "  layout:    %s: %s\n", fz_layout_name(s->layout), fz_layout_desc(s->layout));
    fprintf(f, "Checkpoint:  %s%s\n", s->ckpt, s->ckpt_is_root ? " (source root)" : "");
    fprintf(f, "  why:       %s\n", s->why);
    for (uint32_t i = 0; i < s->nskipped; i++)
        fprintf(f, "  skipped:   %s: %s\n", s->skipped[i].name, s->skipped[i].why);
    fprintf(f, "Metadata:    config from %s, tokenizer from %s\n", s->config_dir, s->tokenizer_dir);
    fprintf(f, "Weights:     %u file(s)%s%s\n", v->src.nfiles, v->src.index_name ? " via " : "",
            v->src.index_name ? v->src.index_name : "");
    fprintf(f, "Layout:      %s, %s\n",
            v->opts.hub         ? "--hub (weights at root, no Forgather-only files)"
            : v->opts.root_copy ? "--root-copy (weights at root)"
                                : v->dest_ckpt_dir,
            v->opts.safetensors ? "safetensors" : "pytorch .bin");
    fprintf(f, "Tokens:      %llu added; vocab %llu -> %llu\n", (unsigned long long)m->n_added,
            (unsigned long long)m->old_vocab, (unsigned long long)m->new_vocab);
    for (size_t i = 0; i < m->n_added_tokens; i++)
        fprintf(f, "  + %-24s id %llu\n", m->added_tokens[i], (unsigned long long)m->added_ids[i]);
    if (m->n_role_added)
        fprintf(f, "  (%llu role token(s) the source names but its vocabulary lacks)\n",
                (unsigned long long)m->n_role_added);
    if (m->rows > m->new_vocab)
        fprintf(f, "Rows:        %llu (%llu padding rows kept)\n", (unsigned long long)m->rows,
                (unsigned long long)(m->rows - m->new_vocab));
    fprintf(f, "Embedding:   %s%s\n", v->embed_name ? v->embed_name : "(not found)",
            v->tied ? " (tied with the output head)" : "");
    fprintf(f, "Head:        %s%s%s\n", v->head_name ? v->head_name : "(not in weights)",
            v->head_bias_name ? ", bias " : "", v->head_bias_name ? v->head_bias_name : "");
    fprintf(f, "Stop ids:    [");
    for (size_t i = 0; i < m->n_stop_ids; i++)
        fprintf(f, "%s%lld", i ? ", " : "", (long long)m->stop_ids[i]);
    fprintf(f, "]\n");
    fprintf(f, "Generation:  %s\n",
            m->has_generation_config
                ? (v->opts.generation_config ? v->opts.generation_config : "carry")
                : "none (no generation_config.json)");
    if (v->opts.keep_optimizer)
        fprintf(f, "Optimizer:   carried (%s -> optimizer_state.pt)\n",
                strrchr(s->optimizer, '/') + 1);
    else
        fprintf(f, "Optimizer:   dropped\n");
    if (v->quant) {
        json_t *ign = json_object_get(v->quant_config, "ignore");
        size_t k;
        json_t *e;
        fprintf(f, "Quantize:    %s (compressed-tensors %s); not quantized:", v->quant->recipe,
                v->quant->format);
        json_array_foreach(ign, k, e) fprintf(f, "%s %s", k ? "," : "", json_string_value(e));
        fprintf(f, "\n");
    }
    fprintf(f, "\nTensors:\n");
    fz_buf line = FZ_BUF_INIT, shape = FZ_BUF_INIT;
    for (uint32_t i = 0; i < v->nouts; i++) {
        line.len = shape.len = 0;
        int rc = tensor_line(v, &v->outs[i], &line, &shape);
        if (rc) {
            fz_buf_free(&line);
            fz_buf_free(&shape);
            return rc;
        }
        fwrite(line.data, 1, line.len, f);
    }
    fz_buf_free(&line);
    fz_buf_free(&shape);
    fprintf(f, "\nFiles:\n");
    for (uint32_t i = 1; i < v->nnodes; i++) {
        const fz_node *n = &v->nodes[i];
        if (n->kind == FZ_NODE_DIR)
            fprintf(f, "  %s/\n", n->path);
        else if (n->kind == FZ_NODE_SYMLINK)
            fprintf(f, "  %s -> %s\n", n->path, n->target);
        else {
            const char *whole, *kind = seg_kind(v, i, &whole);
            fprintf(f, "  %-60s %12llu  %s%s%s\n", n->path, (unsigned long long)n->size, kind,
                    whole ? ": the source file " : "", whole ? whole : "");
        }
    }
    return 0;
}

int fz_view_plan_json(const fz_view *v, fz_buf *out)
{
    const fz_meta_out *m = &v->meta;
    json_t *root = json_object();
    json_object_set_new(root, "source", json_string(v->src.root));
    json_object_set_new(root, "layout",
                        json_pack("{s:s, s:s}", "name", fz_layout_name(v->src.layout),
                                  "description", fz_layout_desc(v->src.layout)));
    json_t *ck = json_object();
    json_object_set_new(ck, "path", json_string(v->src.ckpt));
    json_object_set_new(ck, "step", v->src.step >= 0 ? json_integer(v->src.step) : json_null());
    json_object_set_new(ck, "is_root", json_boolean(v->src.ckpt_is_root));
    json_object_set_new(ck, "why", json_string(v->src.why));
    json_t *skipped = json_array();
    for (uint32_t i = 0; i < v->src.nskipped; i++)
        json_array_append_new(skipped, json_pack("{s:s, s:s}", "name", v->src.skipped[i].name,
                                                 "why", v->src.skipped[i].why));
    json_object_set_new(ck, "skipped", skipped);
    json_object_set_new(ck, "config_dir", json_string(v->src.config_dir));
    json_object_set_new(ck, "tokenizer_dir", json_string(v->src.tokenizer_dir));
    json_object_set_new(root, "checkpoint", ck);
    json_object_set_new(root, "format", json_string(v->opts.safetensors ? "safetensors" : "bin"));
    json_object_set_new(root, "root_copy", json_boolean(v->opts.root_copy));
    json_object_set_new(root, "hub", json_boolean(v->opts.hub));
    json_object_set_new(root, "dest_checkpoint",
                        v->dest_ckpt_dir ? json_string(v->dest_ckpt_dir) : json_null());
    json_t *tok = json_object();
    json_object_set_new(tok, "old_vocab", json_integer((json_int_t)m->old_vocab));
    json_object_set_new(tok, "new_vocab", json_integer((json_int_t)m->new_vocab));
    json_object_set_new(tok, "added", json_integer((json_int_t)m->n_added));
    json_object_set_new(tok, "rows", json_integer((json_int_t)m->rows));
    json_object_set_new(tok, "role_tokens_added", json_integer((json_int_t)m->n_role_added));
    json_t *added = json_array();
    for (size_t i = 0; i < m->n_added_tokens; i++)
        json_array_append_new(added, json_pack("{s:s, s:I}", "token", m->added_tokens[i], "id",
                                               (json_int_t)m->added_ids[i]));
    json_object_set_new(tok, "tokens", added);
    json_t *stops = json_array();
    for (size_t i = 0; i < m->n_stop_ids; i++)
        json_array_append_new(stops, json_integer(m->stop_ids[i]));
    json_object_set_new(tok, "stop_ids", stops);
    json_object_set_new(root, "tokens", tok);
    json_object_set_new(root, "embedding",
                        v->embed_name ? json_string(v->embed_name) : json_null());
    json_object_set_new(root, "head", v->head_name ? json_string(v->head_name) : json_null());
    json_object_set_new(root, "tied", json_boolean(v->tied));
    if (v->quant) {
        json_t *q = json_object();
        json_object_set_new(q, "recipe", json_string(v->quant->recipe));
        json_object_set_new(q, "format", json_string(v->quant->format));
        json_object_set(q, "ignore", json_object_get(v->quant_config, "ignore"));
        json_object_set_new(root, "quantize", q);
    } else {
        json_object_set_new(root, "quantize", json_null());
    }
    json_t *tensors = json_array();
    for (uint32_t i = 0; i < v->nouts; i++) {
        const fz_outtensor *o = &v->outs[i];
        const fz_recipe *r = &v->recipes[o->recipe];
        json_t *t = json_object(), *shape = json_array();
        for (int d = 0; d < r->ndim; d++)
            json_array_append_new(shape, json_integer((json_int_t)r->shape[d]));
        json_object_set_new(t, "name", json_string(o->name));
        json_object_set_new(t, "shard", json_string(v->shard_names[o->shard]));
        json_object_set_new(t, "source_dtype", json_string(fz_dtype_torch_name(r->src.dtype)));
        json_object_set_new(t, "dtype", json_string(fz_dtype_torch_name(r->out_dtype)));
        json_object_set_new(t, "shape", shape);
        json_object_set_new(t, "op", json_string(o->alias ? "alias" : op_of(v, r)));
        json_object_set_new(t, "role", o->role ? json_string(o->role) : json_null());
        json_array_append_new(tensors, t);
    }
    json_object_set_new(root, "tensors", tensors);
    json_t *files = json_array();
    for (uint32_t i = 1; i < v->nnodes; i++) {
        const fz_node *n = &v->nodes[i];
        json_t *e = json_object();
        json_object_set_new(e, "path", json_string(n->path));
        json_object_set_new(e, "type",
                            json_string(n->kind == FZ_NODE_DIR       ? "dir"
                                        : n->kind == FZ_NODE_SYMLINK ? "symlink"
                                                                     : "file"));
        if (n->kind == FZ_NODE_FILE) {
            json_object_set_new(e, "size", json_integer((json_int_t)n->size));
            const char *whole;
            json_object_set_new(e, "content", json_string(seg_kind(v, i, &whole)));
            if (whole)
                json_object_set_new(e, "source", json_string(whole));
        }
        if (n->kind == FZ_NODE_SYMLINK)
            json_object_set_new(e, "target", json_string(n->target));
        json_array_append_new(files, e);
    }
    json_object_set_new(root, "files", files);
    fz_json_style style = {2, false, true, true};
    int rc = fz_json_emit(root, &style, out);
    json_decref(root);
    return rc;
}
