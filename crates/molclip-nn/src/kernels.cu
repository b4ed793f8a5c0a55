/* molclip's own CUDA kernels, compiled at run time by NVRTC (kernels.rs). Each computes what
   its CPU body does, in float32, in the same order. tests/cuda_kernels_on_the_cpu.rs runs them
   on the CPU, compiled as C++. */

#define EACH(i, n) for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < (n); \
                        i += (unsigned long long)blockDim.x * gridDim.x)

/* One AdamW update of up to ADAMW_LIST tensors in one launch: tensor t's parameter p[t],
   gradient g[t] and moments m[t], v[t] hold the values start[t] to start[t + 1] of the
   launch's flat index, start[count] values in all (update.rs fills it). */
#define ADAMW_LIST 64
struct AdamWList {
    float* p[ADAMW_LIST];
    const float* g[ADAMW_LIST];
    float* m[ADAMW_LIST];
    float* v[ADAMW_LIST];
    unsigned long long start[ADAMW_LIST + 1];
    unsigned int count;
};

/* The step's constants in float32: each moment's keep and take, then unbias (1 / sqrt of the
   second moment's bias correction), eps, decay (1 - lr * wd), rate (lr / the first's) and the
   gradients' scale (gradient clipping's coefficient, 1 without). */
struct AdamWConstants {
    float keep1, take1, keep2, take2, unbias, eps, decay, rate, scale;
};

/* Per value, what the CPU's three passes do (update.rs), in the same order: the gradient
   g = g * scale + 0, both moments m = (m * keep + 0) + (g * take + 0), g squared for v, then
   p = (p * decay + 0) - ((m / ((sqrt(v) * unbias + 0) * 1 + eps)) * rate + 0). */
extern "C" __global__ void adamw(AdamWList list, AdamWConstants c) {
    EACH(i, list.start[list.count]) {
        /* The last tensor starting at or before i: the one holding it (empty ones skipped). */
        unsigned int t = 0, hi = list.count - 1;
        while (t < hi) {
            unsigned int mid = (t + hi + 1) / 2;
            if (list.start[mid] <= i) t = mid; else hi = mid - 1;
        }
        unsigned long long j = i - list.start[t];
        float g = list.g[t][j] * c.scale + 0.0f, gg = g * g;
        float m = (list.m[t][j] * c.keep1 + 0.0f) + (g * c.take1 + 0.0f);
        float v = (list.v[t][j] * c.keep2 + 0.0f) + (gg * c.take2 + 0.0f);
        float denom = (sqrtf(v) * c.unbias + 0.0f) * 1.0f + c.eps;
        list.m[t][j] = m;
        list.v[t][j] = v;
        list.p[t][j] = (list.p[t][j] * c.decay + 0.0f) - ((m / denom) * c.rate + 0.0f);
    }
}

/* The sums of squares of up to ADAMW_LIST float32 tensors, in float64 and in an order fixed
   by each tensor's length alone (whatever the launch): tensor t's len[t] values x[t] are
   spread over the lanes start[t] to start[t + 1] of the launch's flat index (norm.rs sets how
   many), lane k of L summing x[k]^2, x[k + L]^2, ... in turn into lane[start[t] + k]; then
   square_totals adds each tensor's lanes in their order. A float32 value's square is exact
   in float64, so the sums do not depend on fused multiply-adds. */
struct SquareList {
    const float* x[ADAMW_LIST];
    unsigned long long len[ADAMW_LIST];
    unsigned long long start[ADAMW_LIST + 1];
    unsigned int count;
};

extern "C" __global__ void square_lanes(SquareList list, double* lane) {
    EACH(i, list.start[list.count]) {
        unsigned int t = 0, hi = list.count - 1;
        while (t < hi) {
            unsigned int mid = (t + hi + 1) / 2;
            if (list.start[mid] <= i) t = mid; else hi = mid - 1;
        }
        unsigned long long k = i - list.start[t], lanes = list.start[t + 1] - list.start[t];
        double sum = 0.0;
        for (unsigned long long j = k; j < list.len[t]; j += lanes) {
            double x = list.x[t][j];
            sum += x * x;
        }
        lane[i] = sum;
    }
}

extern "C" __global__ void square_totals(SquareList list, const double* lane, double* total) {
    EACH(t, list.count) {
        double sum = 0.0;
        for (unsigned long long k = list.start[t]; k < list.start[t + 1]; k++) sum += lane[k];
        total[t] = sum;
    }
}

extern "C" __global__ void relu(const float* x, float* y, unsigned long long n) {
    EACH(i, n) { y[i] = fmaxf(x[i], 0.0f); }
}

extern "C" __global__ void add_relu(const float* a, const float* b, float* y, unsigned long long n) {
    EACH(i, n) { y[i] = fmaxf(a[i] + b[i], 0.0f); }
}

/* The gradient through a ReLU, from its output: it passes where y > 0. */
extern "C" __global__ void relu_grad(const float* y, const float* dy, float* dx, unsigned long long n) {
    EACH(i, n) { dx[i] = y[i] > 0.0f ? dy[i] : 0.0f; }
}

/* Batch norm's running statistics from cuDNN's saved ones (mean[c], then 1 / sqrt(var + eps)[c]):
   running = running * (1 - momentum) + batch * momentum, the variance unbiased (times n / (n - 1)). */
extern "C" __global__ void bn_running(float* running, const float* saved, unsigned long long c, int variance,
                                      float keep, float momentum, float eps, float unbias) {
    EACH(i, c) {
        float batch = variance ? (1.0f / (saved[c + i] * saved[c + i]) - eps) * unbias : saved[i];
        running[i] = running[i] * keep + batch * momentum;
    }
}

/* 3D max pooling's geometry: input t x h x w per plane, output ot x oh x ow, kernel, stride and
   padding per axis (as `Pool` in kernels.rs). */
struct Pool { int t, h, w, ot, oh, ow, kt, kh, kw, st, sh, sw, pt, ph, pw; };

#define NO_TAP 0xffffffffu

/* For each output element, the index (within its plane) of its window's first maximum in
   time, height, width order, a NaN winning (the last one seen); NO_TAP if the window holds
   only padding. The CPU's pool_argmax, tap by tap. */
extern "C" __global__ void pool_argmax(const float* x, unsigned* arg, unsigned long long planes, struct Pool p) {
    unsigned long long n = (unsigned long long)p.ot * p.oh * p.ow, vol = (unsigned long long)p.t * p.h * p.w;
    EACH(i, planes * n) {
        const float* src = x + (i / n) * vol;
        int o = (int)(i % n), ow = o % p.ow, oh = (o / p.ow) % p.oh, ot = o / (p.ow * p.oh);
        float best = 0.0f;
        unsigned at = NO_TAP;
        for (int a = 0; a < p.kt; a++) {
            int it = ot * p.st + a - p.pt;
            if (it < 0 || it >= p.t) continue;
            for (int b = 0; b < p.kh; b++) {
                int ih = oh * p.sh + b - p.ph;
                if (ih < 0 || ih >= p.h) continue;
                for (int c = 0; c < p.kw; c++) {
                    int iw = ow * p.sw + c - p.pw;
                    if (iw < 0 || iw >= p.w) continue;
                    unsigned idx = (unsigned)((it * p.h + ih) * p.w + iw);
                    float v = src[idx];
                    if (at == NO_TAP || v > best || v != v) { best = v; at = idx; }
                }
            }
        }
        arg[i] = at;
    }
}

/* The first output along one axis whose window covers input position i, and the last. */
__device__ int first_cover(int i, int k, int s, int pad) {
    int num = i + pad - k + 1;
    return num <= 0 ? 0 : (num + s - 1) / s;
}
__device__ int last_cover(int i, int s, int pad, int out) {
    return min(out - 1, (i + pad) / s);
}

/* max pooling's input gradient: each input element sums, from 0 and in the outputs' order,
   the gradient of every output whose argmax it is (the CPU's scatter, gathered). */
extern "C" __global__ void pool_grad(const unsigned* arg, const float* dy, float* dx, unsigned long long planes,
                                     struct Pool p) {
    unsigned long long n = (unsigned long long)p.ot * p.oh * p.ow, vol = (unsigned long long)p.t * p.h * p.w;
    EACH(i, planes * vol) {
        unsigned long long plane = i / vol;
        unsigned idx = (unsigned)(i % vol);
        int iw = idx % p.w, ih = (idx / p.w) % p.h, it = idx / (p.w * p.h);
        const unsigned* a = arg + plane * n;
        const float* g = dy + plane * n;
        float acc = 0.0f;
        for (int ot = first_cover(it, p.kt, p.st, p.pt); ot <= last_cover(it, p.st, p.pt, p.ot); ot++)
            for (int oh = first_cover(ih, p.kh, p.sh, p.ph); oh <= last_cover(ih, p.sh, p.ph, p.oh); oh++)
                for (int ow = first_cover(iw, p.kw, p.sw, p.pw); ow <= last_cover(iw, p.sw, p.pw, p.ow); ow++) {
                    int o = (ot * p.oh + oh) * p.ow + ow;
                    if (a[o] == idx) acc += g[o];
                }
        dx[i] = acc;
    }
}
