/* A fake NVML (libnvidia-ml.so.1) for the harness tests: the functions
 * envmatrix_harness/nvml.py calls, with canned values, so the ctypes path runs without a GPU.
 * Variants (cc -D...):
 *   FAKE_INIT_FAILS   nvmlInit_v2 returns NVML_ERROR_DRIVER_NOT_LOADED (9)
 *   FAKE_NO_ENERGY    nvmlDeviceGetTotalEnergyConsumption returns NVML_ERROR_NOT_SUPPORTED (3),
 *                     so the harness samples nvmlDeviceGetPowerUsage instead
 * Two GPUs; memory used is 1 GiB at the first reading and 3 GiB after; the energy counter
 * starts at 1,000,000 mJ and grows by 6,000 mJ a reading; power is 250 W; SM 1980 MHz,
 * memory 2619 MHz. Build: cc -shared -fPIC -o libfake.so fake_nvml.c [-DFAKE_...]
 */
#include <string.h>

typedef void *nvmlDevice_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;

static int initialised = 0;
static int memory_reads = 0;
static unsigned long long energy = 1000000ULL;
static int devices[2] = {0, 1};

static int copy(char *out, unsigned int length, const char *text) {
    if (strlen(text) + 1 > length) return 7; /* NVML_ERROR_INSUFFICIENT_SIZE */
    strcpy(out, text);
    return 0;
}

static int index_of(nvmlDevice_t device) {
    if (device == (nvmlDevice_t)&devices[0]) return 0;
    if (device == (nvmlDevice_t)&devices[1]) return 1;
    return -1;
}

int nvmlInit_v2(void) {
#ifdef FAKE_INIT_FAILS
    return 9;
#else
    initialised = 1;
    return 0;
#endif
}

int nvmlShutdown(void) { initialised = 0; return 0; }

int nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    return initialised ? copy(version, length, "550.54.15") : 1;
}

int nvmlSystemGetCudaDriverVersion_v2(int *version) {
    if (!initialised) return 1;
    *version = 12040;
    return 0;
}

int nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialised) return 1;
    *count = 2;
    return 0;
}

int nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!initialised) return 1;
    if (index > 1) return 2; /* NVML_ERROR_INVALID_ARGUMENT */
    *device = (nvmlDevice_t)&devices[index];
    return 0;
}

int nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    int index = index_of(device);
    if (index < 0) return 2;
    return copy(name, length, index == 0 ? "Fake GPU 0" : "Fake GPU 1");
}

int nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    int index = index_of(device);
    if (index < 0) return 2;
    return copy(uuid, length, index == 0 ? "GPU-fake-0000" : "GPU-fake-1111");
}

int nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    if (index_of(device) < 0) return 2;
    memory->total = 80ULL << 30;
    memory->used = (memory_reads++ == 0 ? 1ULL : 3ULL) << 30;
    memory->free = memory->total - memory->used;
    return 0;
}

int nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device, unsigned long long *millijoules) {
    if (index_of(device) < 0) return 2;
#ifdef FAKE_NO_ENERGY
    (void)millijoules;
    return 3;
#else
    *millijoules = energy;
    energy += 6000ULL;
    return 0;
#endif
}

int nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *milliwatts) {
    if (index_of(device) < 0) return 2;
    *milliwatts = 250000U;
    return 0;
}

int nvmlDeviceGetClockInfo(nvmlDevice_t device, unsigned int type, unsigned int *mhz) {
    if (index_of(device) < 0) return 2;
    if (type == 1) { *mhz = 1980U; return 0; }
    if (type == 2) { *mhz = 2619U; return 0; }
    return 3;
}

/* The CUDA runtime's and cuDNN's version calls, for fingerprint.cuda_libraries. */
int cudaRuntimeGetVersion(int *version) { *version = 11080; return 0; }
unsigned long cudnnGetVersion(void) { return 8907UL; }
