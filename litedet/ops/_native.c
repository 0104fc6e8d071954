/* Compiled post-processing for YOLO heads: decode_yolo (litedet/ops/decode.py), the
 * non_max_suppression (litedet/ops/nms.py) and scale_boxes (litedet/ops/boxes.py)
 * for one image, in one call.
 *
 * Why: right after inference every distinct numpy call of the Python post-processing costs
 * several microseconds while its code and data come back into the caches, and that path makes
 * about a hundred of them per image. This one reads the objectness planes, then only the rows
 * above the threshold.
 *
 * Arithmetic: each step repeats the numpy code's float32 / float64 operations in the same order
 * (built with -ffp-contract=off: no fused multiply-adds), so the only difference from the numpy
 * path is exp: the C library's expf (correctly rounded almost always) against numpy's vectorised
 * exp (up to 2 ulp off on x86). Boxes and scores agree to a few float32 ulps.
 *
 * Only the Python C API and the buffer protocol are used: no numpy headers are needed to build.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LEVELS 16

/* np.maximum / np.minimum: a NaN operand gives NaN (C's fmax / fmin would drop it) */
static inline double np_max(double a, double b) { return isnan(a) ? a : (isnan(b) ? b : (a > b ? a : b)); }
static inline double np_min(double a, double b) { return isnan(a) ? a : (isnan(b) ? b : (a < b ? a : b)); }
static inline float np_maxf(float a, float b) { return isnan(a) ? a : (isnan(b) ? b : (a > b ? a : b)); }
static inline float np_minf(float a, float b) { return isnan(a) ? a : (isnan(b) ? b : (a < b ? a : b)); }

/* litedet.ops.decode.sigmoid in float32: 1 / (1 + exp(-x)); exp overflowing to inf gives 0 */
static inline float sigmoid(float x) {
    float e = expf(-x);
    e = e + 1.0f;
    return 1.0f / e;
}

typedef struct {
    float box[4];     /* x1, y1, x2, y2 in input pixels, as xywh_to_xyxy computes them */
    float score;
    Py_ssize_t cls;
    Py_ssize_t index; /* candidate order: equal scores keep it (numpy's stable argsort) */
} Candidate;

static int by_score(const void *pa, const void *pb) {
    const Candidate *a = (const Candidate *)pa, *b = (const Candidate *)pb;
    if (a->score > b->score) return -1;
    if (a->score < b->score) return 1;
    return (a->index > b->index) - (a->index < b->index);
}

typedef struct {
    Py_buffer map, table;
    Py_ssize_t anchors, cells, image_offset;
    int quantized;          /* 0: float32 [B, A * per_row, H, W]; 1: uint8 [B, H, W, channels] */
    Py_ssize_t channels;    /* quantized: the channels per cell (>= A * per_row, padded) */
    float scale, zero_point;
} Level;

/* The logit of channel k of row (anchor a, cell c): a float map's value, or a quantized map's
 * (q - zero_point) * scale in float32, as DequantizeLinear (and decode_yolo) compute it. */
static inline float logit_at(const Level *level, const void *image, Py_ssize_t per_row, Py_ssize_t a,
                             Py_ssize_t c, Py_ssize_t k) {
    if (level->quantized) {
        const unsigned char q = ((const unsigned char *)image)[c * level->channels + a * per_row + k];
        float v = (float)q;
        v = v - level->zero_point;
        return v * level->scale;
    }
    return ((const float *)image)[(a * per_row + k) * level->cells + c];
}

/* decode_yolo's box of one row: (2 * s - 0.5 + grid) * stride and (2 * s) ** 2 * anchor, step
 * by step in float32, then xywh_to_xyxy: half = wh / 2; (xy - half, xy + half) */
static inline void decode_box(const float *row, const float *cell, float box[4]) {
    float x = sigmoid(row[0]), y = sigmoid(row[1]), w = sigmoid(row[2]), h = sigmoid(row[3]);
    x = x * 2.0f; x = x - 0.5f; x = x + cell[0]; x = x * cell[2];
    y = y * 2.0f; y = y - 0.5f; y = y + cell[1]; y = y * cell[2];
    w = w * 2.0f; w = w * w; w = w * cell[3];
    h = h * 2.0f; h = h * h; h = h * cell[4];
    const float half_w = w / 2.0f, half_h = h / 2.0f;
    box[0] = x - half_w;
    box[1] = y - half_h;
    box[2] = x + half_w;
    box[3] = y + half_h;
}

/* A candidate from one row's logits (x, y, w, h, objectness, classes), or 0 when it is dropped:
 * objectness > conf, best class by sigmoid(class) * objectness (first of equal maxima; a NaN
 * class logit drops the row, as numpy's max is then NaN), score > conf, class mask. */
static int make_candidate(const float *row0, const float *cell, Py_ssize_t nc, float conf,
                          const unsigned char *mask, Candidate *out) {
    const float obj = sigmoid(row0[4]);
    if (!(obj > conf)) return 0;
    /* sigmoid and "* obj" round monotonically, so the largest product is the largest logit's;
     * other classes can tie with it only when their logit is close or sigmoid saturates near 1 */
    float top = row0[5];
    for (Py_ssize_t j = 0; j < nc; j++) {
        const float v = row0[5 + j];
        if (isnan(v)) return 0;
        if (v > top) top = v;
    }
    const float best = sigmoid(top) * obj;
    if (!(best > conf)) return 0;
    const float near = top - 1.0f < 15.0f ? top - 1.0f : 15.0f;
    Py_ssize_t best_cls = -1;
    for (Py_ssize_t j = 0; j < nc && best_cls < 0; j++) {
        const float v = row0[5 + j];
        if (v >= near && sigmoid(v) * obj == best) best_cls = j;
    }
    if (best_cls < 0 || (mask != NULL && !mask[best_cls])) return 0;
    decode_box(row0, cell, out->box);
    out->score = best;
    out->cls = best_cls;
    return 1;
}

/* Multi-label (COCO evaluation): one candidate per class whose sigmoid(class) * objectness is
 * above conf, in class order (numpy's nonzero over the score matrix); a NaN score is just not
 * above. Appends to *cand (growing it); returns how many, or -1 when out of memory. */
static Py_ssize_t make_candidates_multi(const float *row, const float *cell, Py_ssize_t nc, float conf,
                                        float min_logit, const unsigned char *mask, Candidate **cand,
                                        Py_ssize_t *count, Py_ssize_t *capacity) {
    const float obj = sigmoid(row[4]);
    if (!(obj > conf)) return 0;
    /* obj <= 1, so a score above conf needs sigmoid(class) above conf, i.e. a logit above about
     * min_logit: classes well below it are skipped without their exp */
    const float skip_below = min_logit - 0.5f;
    Py_ssize_t added = 0;
    float box[4];
    for (Py_ssize_t j = 0; j < nc; j++) {
        const float v = row[5 + j];
        if (!(v > skip_below)) continue;
        const float score = sigmoid(v) * obj;
        if (!(score > conf) || (mask != NULL && !mask[j])) continue;
        if (added == 0) decode_box(row, cell, box);
        if (*count == *capacity) {
            const Py_ssize_t grown = *capacity * 2 + 16;
            Candidate *bigger = (Candidate *)PyMem_RawRealloc(*cand, sizeof(Candidate) * grown);
            if (bigger == NULL) return -1;
            *cand = bigger;
            *capacity = grown;
        }
        Candidate *c = &(*cand)[*count];
        memcpy(c->box, box, sizeof(box));
        c->score = score;
        c->cls = j;
        c->index = *count;
        (*count)++;
        added++;
    }
    return added;
}

/* The work of detect once the buffers are held: candidates, sort, NMS, output rows. Touches no
 * Python object (called without the GIL); allocates with the raw allocator. *out_rows: float32
 * [*kept, 6], to be freed with PyMem_RawFree. Returns 0, or -1 when out of memory. */
static int run_detect(const Level *levels, Py_ssize_t n_levels, Py_ssize_t per_row, float min_logit, float conf,
                      double iou, Py_ssize_t max_det, Py_ssize_t max_nms, int agnostic, int multi_label,
                      const unsigned char *mask,
                      const float *gain, const float *pad, const float *limit_xy, float **out_rows, Py_ssize_t *kept_out) {
    const Py_ssize_t nc = per_row - 5;
    int status = -1;
    Candidate *cand = NULL;
    float *row = NULL, *rows = NULL;
    double *coords = NULL;
    char *removed = NULL;
    Py_ssize_t *same_next = NULL, *last = NULL;
    /* candidates, level by level, anchor-major then cell (decode_yolo's row order) */
    Py_ssize_t above = 0;
    for (Py_ssize_t l = 0; l < n_levels; l++) {
        const Level *level = &levels[l];
        const void *m = (const char *)level->map.buf + level->image_offset;
        for (Py_ssize_t a = 0; a < level->anchors; a++) {
            if (!level->quantized) { /* a contiguous objectness plane */
                const float *obj = (const float *)m + (a * per_row + 4) * level->cells;
                for (Py_ssize_t c = 0; c < level->cells; c++) above += obj[c] > min_logit;
            } else {
                for (Py_ssize_t c = 0; c < level->cells; c++) above += logit_at(level, m, per_row, a, c, 4) > min_logit;
            }
        }
    }
    Py_ssize_t capacity = above ? above : 1;
    cand = (Candidate *)PyMem_RawMalloc(sizeof(Candidate) * capacity);
    row = (float *)PyMem_RawMalloc(sizeof(float) * per_row);
    if (cand == NULL || row == NULL) goto done;
    Py_ssize_t n = 0;
    for (Py_ssize_t l = 0; l < n_levels; l++) {
        const Level *level = &levels[l];
        const Py_ssize_t hw = level->cells;
        const void *m = (const char *)level->map.buf + level->image_offset;
        const float *t = (const float *)level->table.buf;
        for (Py_ssize_t a = 0; a < level->anchors; a++) {
            for (Py_ssize_t c = 0; c < hw; c++) {
                if (!(logit_at(level, m, per_row, a, c, 4) > min_logit)) continue;
                for (Py_ssize_t k = 0; k < per_row; k++) row[k] = logit_at(level, m, per_row, a, c, k);
                if (multi_label) {
                    if (make_candidates_multi(row, t + (a * hw + c) * 5, nc, conf, min_logit, mask, &cand, &n,
                                              &capacity) < 0)
                        goto done;
                } else if (make_candidate(row, t + (a * hw + c) * 5, nc, conf, mask, &cand[n])) {
                    cand[n].index = n;
                    n++;
                }
            }
        }
    }
    qsort(cand, (size_t)n, sizeof(Candidate), by_score);
    if (n > max_nms) n = max_nms < 0 ? 0 : max_nms;

    /* batched_nms: class k moves by k * (max - min + 1) over every coordinate, in float64 */
    coords = (double *)PyMem_RawMalloc(sizeof(double) * 5 * (n ? n : 1));
    removed = (char *)PyMem_RawCalloc((size_t)(n ? n : 1), 1);
    const Py_ssize_t limit = max_det < 0 ? 0 : max_det;
    rows = (float *)PyMem_RawMalloc(sizeof(float) * 6 * ((n < limit ? n : limit) ? (n < limit ? n : limit) : 1));
    if (coords == NULL || removed == NULL || rows == NULL) goto done;
    double lo = INFINITY, hi = -INFINITY;
    for (Py_ssize_t i = 0; i < n; i++)
        for (int q = 0; q < 4; q++) {
            lo = np_min(lo, (double)cand[i].box[q]); /* boxes.min() / .max(): NaN if any is NaN */
            hi = np_max(hi, (double)cand[i].box[q]);
        }
    const double offset = n ? (hi - lo) + 1.0 : 1.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        /* agnostic: offsets of 0.0, still multiplied (a NaN offset makes every box NaN, as in numpy) */
        const double shift = (agnostic ? 0.0 : (double)(float)cand[i].cls) * offset;
        double *b = coords + 5 * i;
        for (int q = 0; q < 4; q++) b[q] = (double)cand[i].box[q] + shift;
        b[4] = np_max(b[2] - b[0], 0.0) * np_max(b[3] - b[1], 0.0); /* box_area */
    }
    /* Boxes of different classes never overlap once offset (a gap of 1 between classes), so
     * their IoU is 0 and only boxes of the same class are compared: each candidate links to the
     * next one of its class in score order (all one class when agnostic). */
    Py_ssize_t classes = agnostic ? 1 : nc;
    same_next = (Py_ssize_t *)PyMem_RawMalloc(sizeof(Py_ssize_t) * (n ? n : 1));
    last = (Py_ssize_t *)PyMem_RawMalloc(sizeof(Py_ssize_t) * classes);
    if (same_next == NULL || last == NULL) goto done;
    for (Py_ssize_t k = 0; k < classes; k++) last[k] = -1;
    for (Py_ssize_t i = n - 1; i >= 0; i--) {
        const Py_ssize_t k = agnostic ? 0 : cand[i].cls;
        same_next[i] = last[k];
        last[k] = i;
    }
    float *dst = rows;
    Py_ssize_t kept = 0;
    for (Py_ssize_t i = 0; i < n && kept < limit; i++) {
        if (removed[i]) continue;
        for (int q = 0; q < 4; q++) {
            float v = cand[i].box[q];
            if (gain != NULL) { /* scale_boxes: (box - pad) / gain, clipped to the image */
                v = v - pad[q & 1];
                v = v / gain[q & 1];
                v = np_minf(np_maxf(v, 0.0f), limit_xy[q & 1]);
            }
            dst[q] = v;
        }
        dst[4] = cand[i].score;
        dst[5] = (float)cand[i].cls;
        dst += 6;
        if (++kept == limit) break;
        const double *a = coords + 5 * i;
        for (Py_ssize_t j = same_next[i]; j >= 0; j = same_next[j]) {
            if (removed[j]) continue;
            const double *b = coords + 5 * j;
            /* IoU as nms computes it: 0 / 0 (both boxes empty) is NaN, which suppresses nothing */
            const double width = np_max(np_min(a[2], b[2]) - np_max(a[0], b[0]), 0.0);
            const double height = np_max(np_min(a[3], b[3]) - np_max(a[1], b[1]), 0.0);
            const double inter = width * height;
            const double uni = a[4] + b[4] - inter;
            if (inter / uni > iou) removed[j] = 1;
        }
    }
    *out_rows = rows;
    *kept_out = kept;
    rows = NULL;
    status = 0;
done:
    PyMem_RawFree(cand);
    PyMem_RawFree(row);
    PyMem_RawFree(coords);
    PyMem_RawFree(removed);
    PyMem_RawFree(rows);
    PyMem_RawFree(same_next);
    PyMem_RawFree(last);
    return status;
}

/* detect(outputs, tables, image, per_row, min_logit, conf, iou, max_det, max_nms, agnostic,
 *        class_mask, scale[, multi_label]) -> (detections: bytearray float32 [n, 6], n), or None
 *
 * outputs: the head maps per level, float32 C-contiguous [B, A * per_row, H, W], or for an INT8
 * model's quantized maps uint8 [B, H, W, channels] (channels last, padded); tables: per level
 * (cell table float32 [A * H * W, 5] of (gx, gy, stride, anchor w, anchor h), A, H, W,
 * quantization: None for a float map, else (scale, zero point, channels));
 * image: which image of the batch. Rows whose objectness logit is above min_logit (compared in
 * float32, as numpy compares a float32 array with a Python float) are decoded, filtered and
 * suppressed per class (greedy, class offsets in float64, at most max_nms candidates by score,
 * max_det kept); class_mask: bytes, nonzero = keep, or None; scale: None, or (gain w, gain h,
 * pad left, pad top, image width, image height) to map the boxes back as scale_boxes does;
 * multi_label: every class above conf gives a candidate (else each row's best class only).
 * Rows (x1, y1, x2, y2, score, class) by descending score. None when an output is not a
 * float32 C-contiguous 4-D array of its table's size (the caller then finds the right tables,
 * or takes the numpy path).
 */
static PyObject *detect(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *outputs, *tables, *mask_obj, *scale_obj;
    Py_ssize_t image, per_row, max_det, max_nms;
    double min_logit_d, conf_d, iou;
    int agnostic, multi_label = 0;
    if (!PyArg_ParseTuple(args, "OOnndddnnpOO|p", &outputs, &tables, &image, &per_row, &min_logit_d, &conf_d, &iou,
                          &max_det, &max_nms, &agnostic, &mask_obj, &scale_obj, &multi_label))
        return NULL;
    const Py_ssize_t nc = per_row - 5;
    if (nc < 1 || !PyTuple_Check(tables) || !PySequence_Check(outputs)) {
        PyErr_SetString(PyExc_TypeError, "detect: per_row >= 6, tables a tuple, outputs a sequence");
        return NULL;
    }
    float gain[2] = {1.0f, 1.0f}, pad[2] = {0.0f, 0.0f}, limit_xy[2] = {0.0f, 0.0f};
    const int have_scale = scale_obj != Py_None;
    if (have_scale) {
        double g0, g1, p0, p1, l0, l1;
        if (!PyArg_ParseTuple(scale_obj, "dddddd", &g0, &g1, &p0, &p1, &l0, &l1)) return NULL;
        /* scale_boxes / clip_boxes take gain, pad and the image size as float32 */
        gain[0] = (float)g0; gain[1] = (float)g1;
        pad[0] = (float)p0; pad[1] = (float)p1;
        limit_xy[0] = (float)l0; limit_xy[1] = (float)l1;
    }
    const Py_ssize_t n_levels = PyTuple_GET_SIZE(tables);
    if (n_levels < 1 || n_levels > MAX_LEVELS || PySequence_Size(outputs) != n_levels) Py_RETURN_NONE;

    Level levels[MAX_LEVELS];
    Py_ssize_t got = 0;
    PyObject *result = NULL;
    Py_buffer mask_buf;
    const unsigned char *mask = NULL;
    int applicable = 1;
    if (mask_obj != Py_None) {
        if (PyObject_GetBuffer(mask_obj, &mask_buf, PyBUF_SIMPLE) < 0) return NULL;
        if (mask_buf.len != nc) {
            PyBuffer_Release(&mask_buf);
            PyErr_SetString(PyExc_ValueError, "detect: class_mask needs one byte per class");
            return NULL;
        }
        mask = (const unsigned char *)mask_buf.buf;
    }
    for (; got < n_levels; got++) {
        Level *level = &levels[got];
        PyObject *entry = PyTuple_GET_ITEM(tables, got);
        PyObject *table_obj, *map_obj, *quant_obj;
        Py_ssize_t height, width;
        if (!PyArg_ParseTuple(entry, "OnnnO", &table_obj, &level->anchors, &height, &width, &quant_obj)) goto done;
        level->quantized = quant_obj != Py_None;
        if (level->quantized) {
            double scale_d, zero_d;
            if (!PyArg_ParseTuple(quant_obj, "ddn", &scale_d, &zero_d, &level->channels)) goto done;
            level->scale = (float)scale_d;
            level->zero_point = (float)zero_d;
        }
        map_obj = PySequence_GetItem(outputs, got);
        if (map_obj == NULL) goto done;
        if (PyObject_GetBuffer(map_obj, &level->map, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
            Py_DECREF(map_obj);
            PyErr_Clear(); /* not a contiguous buffer: not for this path */
            applicable = 0;
            goto done;
        }
        Py_DECREF(map_obj); /* the buffer keeps the array alive */
        if (PyObject_GetBuffer(table_obj, &level->table, PyBUF_C_CONTIGUOUS) < 0) {
            PyBuffer_Release(&level->map);
            goto done;
        }
        const Py_buffer *m = &level->map;
        const char *format = m->format == NULL ? "B" : m->format;
        int fits;
        if (level->quantized) { /* uint8 [B, H, W, channels >= A * per_row], channels last */
            const int uint8 = strcmp(format, "B") == 0 || strcmp(format, "<B") == 0 || strcmp(format, "=B") == 0;
            fits = uint8 && m->itemsize == 1 && m->ndim == 4 && m->shape[1] == height && m->shape[2] == width
                   && m->shape[3] == level->channels && level->channels >= level->anchors * per_row;
        } else { /* float32 [B, A * per_row, H, W] */
            const int float32 = strcmp(format, "f") == 0 || strcmp(format, "<f") == 0 || strcmp(format, "=f") == 0;
            fits = float32 && m->itemsize == 4 && m->ndim == 4 && m->shape[1] == level->anchors * per_row
                   && m->shape[2] == height && m->shape[3] == width;
        }
        if (!fits || image < 0 || image >= m->shape[0]
            || level->table.len != (Py_ssize_t)sizeof(float) * 5 * level->anchors * height * width) {
            applicable = 0;
            got++;
            goto done;
        }
        level->cells = height * width;
        level->image_offset = image * (m->len / m->shape[0]); /* bytes per image */
    }

    const float min_logit = (float)min_logit_d, conf = (float)conf_d;
    float *found = NULL;
    Py_ssize_t kept = 0;
    int status;
    /* no Python object is touched from here: other threads (detect's other streams) run meanwhile */
    Py_BEGIN_ALLOW_THREADS
    status = run_detect(levels, n_levels, per_row, min_logit, conf, iou, max_det, max_nms, agnostic, multi_label, mask,
                        have_scale ? gain : NULL, pad, limit_xy, &found, &kept);
    Py_END_ALLOW_THREADS
    if (status < 0) {
        PyErr_NoMemory();
        goto done;
    }
    PyObject *out = PyByteArray_FromStringAndSize((const char *)found, (Py_ssize_t)sizeof(float) * 6 * kept);
    PyMem_RawFree(found);
    if (out == NULL) goto done;
    result = Py_BuildValue("Nn", out, kept);
done:
    for (Py_ssize_t l = 0; l < got; l++) {
        PyBuffer_Release(&levels[l].map);
        PyBuffer_Release(&levels[l].table);
    }
    if (mask != NULL) PyBuffer_Release(&mask_buf);
    if (result == NULL && !applicable && !PyErr_Occurred()) Py_RETURN_NONE;
    return result;
}

static PyMethodDef methods[] = {
    {"detect", detect, METH_VARARGS, "Decode + per-class NMS (+ letterbox undo) of one image's YOLO head maps."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
