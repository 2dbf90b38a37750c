/* The one-token decode step's work, for nanogpt_edu.fast (see kernel.py, which compiles this file once per machine
   and calls it through ctypes).

   Every pointer is the first float of a contiguous fp32 tensor on the CPU; kernel.py checks that, and the sizes,
   before each call. Matrices are stored row by row: a weight w is (out_features, in_features), nn.Linear's
   layout, so each output is the dot product of one weight row with x and every row is read once, start to end. */

#include <math.h>
#include <stdint.h>

enum { STORE, GELU, GELU_TANH, ADD };  /* what linear does with each output: see GELU_MODES in kernel.py */

static inline void put(float *out, float y, int mode)
{
    if (mode == GELU)
        y = 0.5f * y * (1.0f + erff(y * 0.70710678118654752f));
    else if (mode == GELU_TANH)  /* GPT-2's 0.5 y (1 + tanh(u)), u = sqrt(2/pi) (y + 0.044715 y^3), written as
                                    y / (1 + exp(-2u)): the same function, and expf costs less than tanhf */
        y = y / (1.0f + expf(-1.5957691216057308f * (y + 0.044715f * y * y * y)));
    *out = mode == ADD ? *out + y : y;
}

/* out[b] = (x[b] - mean) / sqrt(variance + eps) * weight + bias, for x (B, C); linear calls it */
static void layer_norm(const float *x, const float *weight, const float *bias, float *out, int64_t B, int64_t C,
                       float eps)
{
    for (int64_t b = 0; b < B; b++) {
        const float *xb = x + b * C;
        float mean = 0.0f, variance = 0.0f;
        #pragma omp simd reduction(+ : mean)
        for (int64_t i = 0; i < C; i++)
            mean += xb[i];
        mean /= C;
        #pragma omp simd reduction(+ : variance)
        for (int64_t i = 0; i < C; i++)
            variance += (xb[i] - mean) * (xb[i] - mean);
        float scale = 1.0f / sqrtf(variance / C + eps);
        for (int64_t i = 0; i < C; i++)
            out[b * C + i] = (xb[i] - mean) * scale * weight[i] + (bias ? bias[i] : 0.0f);
    }
}

/* out[b][o] (=, or += for ADD) bias[o] + sum over i of x[b][i] * w[o][i], for x (B, I), w (O, I), out (B, O);
   with norm_weight, x first goes through layer_norm into normed (B, I) */
void linear(const float *w, const float *x, const float *bias, float *out, int64_t B, int64_t O, int64_t I,
            int mode, const float *norm_weight, const float *norm_bias, float eps, float *normed)
{
    if (norm_weight) {
        layer_norm(x, norm_weight, norm_bias, normed, B, I, eps);
        x = normed;
    }
    /* Each core reads four rows at once, from four places a quarter of the matrix apart: memory delivers several
       streams far apart faster than one (the README's Speed section has the measurements, bench/matvec.py).
       The cores share the groups of rows, handed out in shrinking chunks ("guided") so a core that starts late
       takes fewer; a small matrix stays on one core, as starting the other costs more than it saves */
    int64_t Q = (O + 3) / 4;  /* rows r, r + Q, r + 2Q and r + 3Q go together */
    #pragma omp parallel for schedule(guided, 16) if (O * I >= 65536)
    for (int64_t r = 0; r < Q; r++) {
        const float *w0 = w + r * I;  /* where the last quarter is short, row r again: summed, never stored */
        const float *w1 = r + Q < O ? w0 + Q * I : w0;
        const float *w2 = r + 2 * Q < O ? w0 + 2 * Q * I : w0;
        const float *w3 = r + 3 * Q < O ? w0 + 3 * Q * I : w0;
        for (int64_t b = 0; b < B; b++) {
            const float *xb = x + b * I;
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
            #pragma omp simd reduction(+ : s0, s1, s2, s3)
            for (int64_t i = 0; i < I; i++) {
                s0 += w0[i] * xb[i];
                s1 += w1[i] * xb[i];
                s2 += w2[i] * xb[i];
                s3 += w3[i] * xb[i];
            }
            float sums[4] = {s0, s1, s2, s3};
            for (int64_t k = 0; k < 4 && r + k * Q < O; k++)
                put(out + b * O + r + k * Q, bias ? sums[k] + bias[r + k * Q] : sums[k], mode);
        }
    }
}

/* One new position t per sequence: qkv (B, 3 * H * D) holds its query, key and value for every head. Store the
   key and value at position t of this layer's caches k, v (B, H, capacity, D), then write to y (B, H * D) each
   head's softmax(q . k_s / sqrt(D)) weighted sum of the values v_s, s = 0 ... t */
void attend(const float *qkv, float *k, float *v, float *y, int64_t B, int64_t H, int64_t D, int64_t t,
            int64_t capacity)
{
    float scale = 1.0f / sqrtf((float)D);
    #pragma omp parallel for if (B * H * (t + 1) * D >= 65536)
    for (int64_t bh = 0; bh < B * H; bh++) {
        int64_t b = bh / H, h = bh % H;
        const float *q = qkv + b * 3 * H * D + h * D;
        float *keys = k + bh * capacity * D, *values = v + bh * capacity * D, *out = y + b * H * D + h * D;
        for (int64_t d = 0; d < D; d++) {
            keys[t * D + d] = q[H * D + d];
            values[t * D + d] = q[2 * H * D + d];
        }
        /* softmax in one pass ("online"): keep the largest score so far and rescale the running sums when it
           grows, so no buffer of t + 1 scores is needed */
        float top = -INFINITY, total = 0.0f;
        for (int64_t d = 0; d < D; d++)
            out[d] = 0.0f;
        for (int64_t s = 0; s <= t; s++) {
            float score = 0.0f;
            #pragma omp simd reduction(+ : score)
            for (int64_t d = 0; d < D; d++)
                score += q[d] * keys[s * D + d];
            score *= scale;
            if (score > top) {
                float shrink = expf(top - score);
                for (int64_t d = 0; d < D; d++)
                    out[d] *= shrink;
                total *= shrink;
                top = score;
            }
            float weight = expf(score - top);
            total += weight;
            for (int64_t d = 0; d < D; d++)
                out[d] += weight * values[s * D + d];
        }
        for (int64_t d = 0; d < D; d++)
            out[d] /= total;
    }
}
