/* Private to formats/pickle*.c: the restricted pickle machine's value model,
 * shared by the opcode loop (pickle.c) and the torch semantics
 * (pickle_torch.c). Not part of the formats API; no thread safety needed
 * (one machine per call). */
#ifndef FZ_FORMATS_PICKLE_VM_H
#define FZ_FORMATS_PICKLE_VM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "formats/pickle.h"

#define PK_MAX_INPUT 0xFFFFFFFFull
#define PK_MAX_STACK (1u << 20)
#define PK_MAX_MARKS (1u << 16)
#define PK_MAX_MEMO (1u << 20)
/* Memory the machine may allocate: PK_MEM_FACTOR bytes per input byte
 * plus PK_MEM_BASE (fz_pk_charge). torch.save of a state dict needs about
 * 4.3 (35k tensors, counting the arrays' doubling slack); one-byte opcodes
 * that each make an object need 16 and more. */
#define PK_MEM_FACTOR 8u
#define PK_MEM_BASE (1u << 20)

enum {
    V_UNSET,
    V_NONE,
    V_BOOL,
    V_INT,
    V_FLOAT,
    V_STR,
    V_BYTES,
    V_TUPLE,
    V_LIST,
    V_DICT,
    V_GLOBAL,
    V_STORAGE,
    V_TENSOR
};

enum {
    G_ODICT,
    G_REBUILD_V2,
    G_REBUILD_V3,
    G_PARAM,
    G_PARAM_STATE,
    G_STORAGE,
    G_UNTYPED,
    G_DTYPE,
    G_SIZE
};

typedef struct {
    uint8_t kind;
    uint8_t g;  /* V_GLOBAL: G_* */
    uint8_t dt; /* V_GLOBAL G_STORAGE / G_DTYPE: fz_dtype */
    union {
        int64_t i;
        double f;
        struct {
            uint32_t off, len; /* V_STR / V_BYTES: bytes of the input */
        } s;
        uint32_t obj; /* V_TUPLE/LIST/DICT: objs[], V_STORAGE: sto[], V_TENSOR: ten[] */
    } u;
} pk_val;

typedef struct {
    uint32_t n, cap;
    pk_val *items; /* dict: key, value, key, value ... */
} pk_obj;

typedef struct {
    uint32_t key_off, key_len;
    fz_dtype dt;
    bool untyped;
    uint64_t nbytes;
} pk_storage;

typedef struct {
    uint32_t sto;
    fz_dtype dt;
    uint64_t off;
    int ndim;
    uint64_t shape[FZ_MAX_DIMS];
    int64_t stride[FZ_MAX_DIMS];
} pk_tensor;

typedef struct {
    const uint8_t *d;
    size_t len, pos;
    const char *path;
    pk_val *stack;
    size_t sp, scap;
    size_t *marks;
    size_t nmarks, mcap;
    pk_val *memo;
    size_t memo_cap, memo_count;
    pk_obj *objs;
    size_t nobjs, ocap;
    pk_storage *sto;
    size_t nsto, stocap;
    pk_tensor *ten;
    size_t nten, tencap;
    size_t mem, mem_max; /* bytes allocated so far, and the bound */
} pk_machine;

/* Grow *pp (an array of elsz-byte items, capacity *cap) to hold `need`;
 * FZ_ERANGE past `limit` (naming `what`) or past m's memory bound,
 * FZ_ENOMEM. */
int fz_pk_grow(void *pp, size_t *cap, size_t need, size_t elsz, size_t limit, const char *what,
               pk_machine *m);
/* Count `bytes` more against m's memory bound; FZ_ERANGE past it. */
int fz_pk_charge(pk_machine *m, size_t bytes);
/* FZ_EFORMAT "<path>: bad pickle at offset N: <what>". */
int fz_pk_bad(pk_machine *m, const char *what);
int fz_pk_push(pk_machine *m, pk_val v);
/* Pop one value above the top mark; FZ_EFORMAT on underflow. */
int fz_pk_pop(pk_machine *m, pk_val *v);
/* A new tuple/list/dict holding a copy of items[0..n). */
int fz_pk_new_obj(pk_machine *m, uint8_t kind, const pk_val *items, size_t n, pk_val *out);
bool fz_pk_str_is(const pk_machine *m, const pk_val *v, const char *s);

/* pickle_torch.c: GLOBAL resolution, BINPERSID, REDUCE, and the result. */
int fz_pk_resolve_global(pk_machine *m, const uint8_t *mod, size_t ml, const uint8_t *nm, size_t nl,
                         pk_val *out);
int fz_pk_persid(pk_machine *m);
int fz_pk_reduce(pk_machine *m);
int fz_pk_collect(pk_machine *m, const pk_val *top, fz_pickle_dict *out);

#endif
