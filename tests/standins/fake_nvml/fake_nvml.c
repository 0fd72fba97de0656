/*
 * A stand-in for NVIDIA's libnvidia-ml.so.1 on a machine without GPUs.
 *
 * It exports the NVML entry points gpunode's device plugin uses (through the real
 * pynvml), with NVML's own calling conventions, return codes and struct layouts, so the
 * code under test cannot tell it from the real library. Fake GPUs come from a small
 * config file; XID events and lost GPUs are injected at run time by appending lines to
 * an events file. README.md beside this file documents both formats and the
 * environment variables.
 *
 * Only what a device plugin needs is here: system versions, device enumeration and
 * identity, PCI info, memory, MIG devices and their attributes, topology (common
 * ancestor, NVLink), NUMA affinity and the event API.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* ---- NVML's public types (nvml.h), layouts as NVML and pynvml define them ---- */

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_ALREADY_INITIALIZED = 5,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_INSUFFICIENT_POWER = 8,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_IRQ_ISSUE = 11,
    NVML_ERROR_LIBRARY_NOT_FOUND = 12,
    NVML_ERROR_FUNCTION_NOT_FOUND = 13,
    NVML_ERROR_CORRUPTED_INFOROM = 14,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_RESET_REQUIRED = 16,
    NVML_ERROR_OPERATING_SYSTEM = 17,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18,
    NVML_ERROR_IN_USE = 19,
    NVML_ERROR_MEMORY = 20,
    NVML_ERROR_NO_DATA = 21,
    NVML_ERROR_UNKNOWN = 999,
};

typedef struct fake_device *nvmlDevice_t;
typedef struct fake_event_set *nvmlEventSet_t;

typedef struct {
    char busIdLegacy[16];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

typedef struct {
    unsigned int multiprocessorCount;
    unsigned int sharedCopyEngineCount;
    unsigned int sharedDecoderCount;
    unsigned int sharedEncoderCount;
    unsigned int sharedJpegCount;
    unsigned int sharedOfaCount;
    unsigned int gpuInstanceSliceCount;
    unsigned int computeInstanceSliceCount;
    unsigned long long memorySizeMB;
} nvmlDeviceAttributes_t;

typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlEventData_t;

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

typedef union {
    double dVal;
    unsigned int uiVal;
    unsigned long ulVal;
    unsigned long long ullVal;
    signed long long sllVal;
    signed int siVal;
    unsigned short usVal;
} nvmlValue_t;

typedef struct {
    unsigned int fieldId;
    unsigned int scopeId;
    long long timestamp;
    long long latencyUsec;
    int valueType;
    nvmlReturn_t nvmlReturn;
    nvmlValue_t value;
} nvmlFieldValue_t;

/* The sizes nvml.h gives these structs on LP64; pynvml's ctypes mirrors must agree
 * (tests/plugin checks pynvml's side against fakeNvmlStructSize). */
_Static_assert(sizeof(nvmlPciInfo_t) == 68, "nvmlPciInfo_t");
_Static_assert(sizeof(nvmlMemory_t) == 24, "nvmlMemory_t");
_Static_assert(sizeof(nvmlMemory_v2_t) == 40, "nvmlMemory_v2_t");
_Static_assert(sizeof(nvmlDeviceAttributes_t) == 40, "nvmlDeviceAttributes_t");
_Static_assert(sizeof(nvmlEventData_t) == 32, "nvmlEventData_t");
_Static_assert(sizeof(nvmlUtilization_t) == 8, "nvmlUtilization_t");
_Static_assert(sizeof(nvmlFieldValue_t) == 40, "nvmlFieldValue_t");

#define NVML_FI_DEV_MEMORY_TEMP 82
#define NVML_VALUE_TYPE_UNSIGNED_INT 1

#define nvmlEventTypeSingleBitEccError 0x1ULL
#define nvmlEventTypeDoubleBitEccError 0x2ULL
#define nvmlEventTypeXidCriticalError 0x8ULL
#define SUPPORTED_EVENTS (nvmlEventTypeSingleBitEccError | nvmlEventTypeDoubleBitEccError | nvmlEventTypeXidCriticalError)

#define NVML_TOPOLOGY_INTERNAL 0
#define NVML_TOPOLOGY_SINGLE 10
#define NVML_TOPOLOGY_MULTIPLE 20
#define NVML_TOPOLOGY_HOSTBRIDGE 30
#define NVML_TOPOLOGY_NODE 40
#define NVML_TOPOLOGY_SYSTEM 50

#define NVML_NVLINK_LINKS 18 /* links per GPU this fake models (H100 has 18) */
#define INVALID_INSTANCE 0xFFFFFFFFu

/* ---- the fake devices ---- */

#define MAX_GPUS 64
#define MAX_MIGS 8
#define DEVICE_MAGIC 0x6e766d6cu

struct fake_device {
    unsigned int magic;
    int is_mig;
    unsigned int index;            /* GPU index, or the MIG device's slot on its parent */
    struct fake_device *parent;    /* MIG devices only */
    char uuid[96];
    char name[96];
    char bus_id[32];
    unsigned int domain, bus, dev;
    unsigned int pci_device_id, pci_subsystem_id;
    unsigned int minor;
    int numa;                      /* -1: no NUMA affinity */
    unsigned long long memory_bytes;
    int mig_mode;                  /* -1: MIG not supported, 0 disabled, 1 enabled */
    int events_supported;
    int mig_error;                 /* NVML error the MIG device queries answer (0: none) */
    unsigned int gi, ci, gi_slices, ci_slices, sm_count, copy_engines, decoders, encoders, jpegs, ofas;
    struct fake_device *migs[MAX_MIGS];
    unsigned int mig_count;
    int nvlink_peer[NVML_NVLINK_LINKS]; /* GPU index at the other end of each active link */
    unsigned int nvlink_count;
    volatile int lost;             /* set by a `lost` event line: every query fails from then on */
    int cc_major, cc_minor;        /* CUDA compute capability */
    struct telemetry *t;           /* GPUs only: the values the telemetry queries answer */
};

/* What the telemetry queries answer, per GPU: defaults, overridden by the telemetry file
 * (FAKE_NVML_TELEMETRY), which is read again whenever it changed, so a test can change a
 * value (a temperature, an ECC counter) while the process under test runs. */
struct telemetry {
    unsigned int util_gpu, util_mem, util_enc, util_dec;
    unsigned int temp, mem_temp, power_mw, sm_clock, mem_clock, pcie_replay;
    unsigned long long energy_mj, throttle, fb_used_mib;
    unsigned long long ecc[2][2];  /* [corrected, uncorrected][volatile, aggregate] */
    unsigned int remap_corr, remap_unc, remap_pending, remap_failure;
    int fail;                      /* NVML error every telemetry query answers (0: none) */
};

static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static int init_refcount;
static struct fake_device gpus[MAX_GPUS];
static struct fake_device migs[MAX_GPUS * MAX_MIGS];
static unsigned int gpu_count;
static unsigned int mig_total;
static int topology[MAX_GPUS][MAX_GPUS]; /* -1: derive from NUMA nodes */
static struct telemetry telemetry[MAX_GPUS];
static pthread_mutex_t telemetry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct stat telemetry_seen;
static int telemetry_loaded;
static char driver_version[80];
static char nvml_version[96];
static int cuda_version;

static void complain(const char *fmt, const char *arg) {
    fprintf(stderr, "fake-nvml: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
}

static const struct { const char *name; int code; } error_names[] = {
    {"UNINITIALIZED", NVML_ERROR_UNINITIALIZED},
    {"INVALID_ARGUMENT", NVML_ERROR_INVALID_ARGUMENT},
    {"NOT_SUPPORTED", NVML_ERROR_NOT_SUPPORTED},
    {"NO_PERMISSION", NVML_ERROR_NO_PERMISSION},
    {"NOT_FOUND", NVML_ERROR_NOT_FOUND},
    {"DRIVER_NOT_LOADED", NVML_ERROR_DRIVER_NOT_LOADED},
    {"TIMEOUT", NVML_ERROR_TIMEOUT},
    {"LIBRARY_NOT_FOUND", NVML_ERROR_LIBRARY_NOT_FOUND},
    {"FUNCTION_NOT_FOUND", NVML_ERROR_FUNCTION_NOT_FOUND},
    {"CORRUPTED_INFOROM", NVML_ERROR_CORRUPTED_INFOROM},
    {"GPU_IS_LOST", NVML_ERROR_GPU_IS_LOST},
    {"RESET_REQUIRED", NVML_ERROR_RESET_REQUIRED},
    {"OPERATING_SYSTEM", NVML_ERROR_OPERATING_SYSTEM},
    {"LIB_RM_VERSION_MISMATCH", NVML_ERROR_LIB_RM_VERSION_MISMATCH},
    {"IN_USE", NVML_ERROR_IN_USE},
    {"MEMORY", NVML_ERROR_MEMORY},
    {"NO_DATA", NVML_ERROR_NO_DATA},
    {"UNKNOWN", NVML_ERROR_UNKNOWN},
};

/* "NO_PERMISSION", "NVML_ERROR_NO_PERMISSION" or "4" -> 4; -1 when unknown. */
static int parse_error_code(const char *text) {
    if (strncmp(text, "NVML_ERROR_", 11) == 0)
        text += 11;
    if (isdigit((unsigned char)text[0]))
        return atoi(text);
    for (size_t i = 0; i < sizeof(error_names) / sizeof(error_names[0]); i++)
        if (strcmp(text, error_names[i].name) == 0)
            return error_names[i].code;
    return -1;
}

static void copy_str(char *dst, size_t size, const char *src) {
    snprintf(dst, size, "%s", src);
}

static void default_gpu(struct fake_device *g, unsigned int index) {
    memset(g, 0, sizeof(*g));
    g->magic = DEVICE_MAGIC;
    g->index = index;
    snprintf(g->uuid, sizeof(g->uuid), "GPU-%08x-0000-4000-8000-%012x", 0xfa4e0000u + index, index);
    copy_str(g->name, sizeof(g->name), "NVIDIA A100-SXM4-40GB");
    g->domain = 0;
    g->bus = 0x07 + index * 0x08;
    g->dev = 0;
    g->pci_device_id = 0x20b010de;
    g->pci_subsystem_id = 0x134f10de;
    g->minor = index;
    g->numa = -1;
    g->memory_bytes = 40960ULL << 20;
    g->mig_mode = 0;
    g->events_supported = 1;
    g->cc_major = 8;
    g->cc_minor = 0;
    g->t = &telemetry[index];
}

static int parse_bus_id(struct fake_device *g, const char *text) {
    unsigned int domain, bus, dev, fn;
    if (sscanf(text, "%x:%x:%x.%x", &domain, &bus, &dev, &fn) != 4)
        return -1;
    g->domain = domain;
    g->bus = bus;
    g->dev = dev;
    return 0;
}

static void format_bus_id(struct fake_device *g) {
    snprintf(g->bus_id, sizeof(g->bus_id), "%08X:%02X:%02X.0", g->domain, g->bus, g->dev);
}

/* Splits `key=value key="a value"` pairs in place. Returns 0 at the end of the line. */
static int next_pair(char **cursor, char **key, char **value) {
    char *p = *cursor;
    while (*p && isspace((unsigned char)*p))
        p++;
    if (!*p)
        return 0;
    *key = p;
    while (*p && *p != '=' && !isspace((unsigned char)*p))
        p++;
    if (*p != '=') {
        *value = p;
        if (*p)
            *p++ = '\0';
        *cursor = p;
        return 1;
    }
    *p++ = '\0';
    if (*p == '"') {
        *value = ++p;
        while (*p && *p != '"')
            p++;
    } else {
        *value = p;
        while (*p && !isspace((unsigned char)*p))
            p++;
    }
    if (*p)
        *p++ = '\0';
    *cursor = p;
    return 1;
}

static int topology_level(const char *name) {
    static const struct { const char *name; int level; } levels[] = {
        {"INTERNAL", NVML_TOPOLOGY_INTERNAL}, {"SINGLE", NVML_TOPOLOGY_SINGLE},
        {"MULTIPLE", NVML_TOPOLOGY_MULTIPLE}, {"HOSTBRIDGE", NVML_TOPOLOGY_HOSTBRIDGE},
        {"NODE", NVML_TOPOLOGY_NODE}, {"SYSTEM", NVML_TOPOLOGY_SYSTEM},
    };
    for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++)
        if (strcmp(name, levels[i].name) == 0)
            return levels[i].level;
    return -1;
}

static int add_nvlinks(unsigned int a, unsigned int b, unsigned int count) {
    if (a >= gpu_count || b >= gpu_count || a == b)
        return -1;
    for (unsigned int i = 0; i < count; i++) {
        if (gpus[a].nvlink_count >= NVML_NVLINK_LINKS || gpus[b].nvlink_count >= NVML_NVLINK_LINKS)
            return -1;
        gpus[a].nvlink_peer[gpus[a].nvlink_count++] = (int)b;
        gpus[b].nvlink_peer[gpus[b].nvlink_count++] = (int)a;
    }
    return 0;
}

/* Parses one config line; returns an NVML error code for init to report, or 0. */
static int parse_config_line(char *line, int lineno, int *init_error) {
    char *cursor = line, *key, *value;
    char where[64];
    snprintf(where, sizeof(where), "line %d", lineno);
    if (!next_pair(&cursor, &key, &value))
        return 0;
    if (strcmp(key, "driver") == 0 || strcmp(key, "nvml") == 0 || strcmp(key, "cuda") == 0 ||
        strcmp(key, "init_error") == 0) {
        char *arg, *ignored;
        if (!next_pair(&cursor, &arg, &ignored)) {
            complain("config %s: missing value", where);
            return NVML_ERROR_UNKNOWN;
        }
        if (strcmp(key, "driver") == 0)
            copy_str(driver_version, sizeof(driver_version), arg);
        else if (strcmp(key, "nvml") == 0)
            copy_str(nvml_version, sizeof(nvml_version), arg);
        else if (strcmp(key, "cuda") == 0)
            cuda_version = atoi(arg);
        else if ((*init_error = parse_error_code(arg)) < 0) {
            complain("config %s: unknown NVML error name", where);
            return NVML_ERROR_UNKNOWN;
        }
        return 0;
    }
    if (strcmp(key, "gpu") == 0) {
        if (gpu_count >= MAX_GPUS) {
            complain("config %s: too many GPUs", where);
            return NVML_ERROR_UNKNOWN;
        }
        struct fake_device *g = &gpus[gpu_count];
        default_gpu(g, gpu_count);
        while (next_pair(&cursor, &key, &value)) {
            if (strcmp(key, "uuid") == 0) copy_str(g->uuid, sizeof(g->uuid), value);
            else if (strcmp(key, "name") == 0) copy_str(g->name, sizeof(g->name), value);
            else if (strcmp(key, "pci") == 0) {
                if (parse_bus_id(g, value) < 0) {
                    complain("config %s: pci wants DDDDDDDD:BB:DD.F", where);
                    return NVML_ERROR_UNKNOWN;
                }
            }
            else if (strcmp(key, "minor") == 0) g->minor = (unsigned int)atoi(value);
            else if (strcmp(key, "numa") == 0) g->numa = atoi(value);
            else if (strcmp(key, "memory_mib") == 0) g->memory_bytes = strtoull(value, NULL, 10) << 20;
            else if (strcmp(key, "mig") == 0) g->mig_mode = strcmp(value, "unsupported") == 0 ? -1 : atoi(value);
            else if (strcmp(key, "events") == 0) g->events_supported = strcmp(value, "unsupported") != 0;
            else if (strcmp(key, "mig_error") == 0) {
                if ((g->mig_error = parse_error_code(value)) < 0) {
                    complain("config %s: mig_error wants an NVML error name", where);
                    return NVML_ERROR_UNKNOWN;
                }
            }
            else if (strcmp(key, "pci_device_id") == 0) g->pci_device_id = (unsigned int)strtoul(value, NULL, 16);
            else if (strcmp(key, "cc") == 0) {
                if (sscanf(value, "%d.%d", &g->cc_major, &g->cc_minor) != 2) {
                    complain("config %s: cc wants MAJOR.MINOR", where);
                    return NVML_ERROR_UNKNOWN;
                }
            }
            else {
                complain("config %s: unknown gpu key", where);
                return NVML_ERROR_UNKNOWN;
            }
        }
        gpu_count++;
        return 0;
    }
    if (strcmp(key, "mig") == 0) {
        struct fake_device *m = &migs[mig_total];
        memset(m, 0, sizeof(*m));
        m->magic = DEVICE_MAGIC;
        m->is_mig = 1;
        m->gi_slices = m->ci_slices = 1;
        m->numa = -1;
        int parent = -1;
        while (next_pair(&cursor, &key, &value)) {
            if (strcmp(key, "parent") == 0) parent = atoi(value);
            else if (strcmp(key, "uuid") == 0) copy_str(m->uuid, sizeof(m->uuid), value);
            else if (strcmp(key, "gi") == 0) m->gi = (unsigned int)atoi(value);
            else if (strcmp(key, "ci") == 0) m->ci = (unsigned int)atoi(value);
            else if (strcmp(key, "gi_slices") == 0) m->gi_slices = (unsigned int)atoi(value);
            else if (strcmp(key, "ci_slices") == 0) m->ci_slices = (unsigned int)atoi(value);
            else if (strcmp(key, "memory_mib") == 0) m->memory_bytes = strtoull(value, NULL, 10) << 20;
            else if (strcmp(key, "sm") == 0) m->sm_count = (unsigned int)atoi(value);
            else if (strcmp(key, "decoders") == 0) m->decoders = (unsigned int)atoi(value);
            else if (strcmp(key, "jpegs") == 0) m->jpegs = (unsigned int)atoi(value);
            else if (strcmp(key, "ofas") == 0) m->ofas = (unsigned int)atoi(value);
            else {
                complain("config %s: unknown mig key", where);
                return NVML_ERROR_UNKNOWN;
            }
        }
        if (parent < 0 || (unsigned int)parent >= gpu_count || gpus[parent].mig_count >= MAX_MIGS) {
            complain("config %s: mig needs parent=<index of a gpu line above>", where);
            return NVML_ERROR_UNKNOWN;
        }
        struct fake_device *p = &gpus[parent];
        m->parent = p;
        m->index = p->mig_count;
        if (!m->uuid[0])
            snprintf(m->uuid, sizeof(m->uuid), "MIG-%08x-0000-4000-8000-%04x%08x", 0x0a160000u + (unsigned)parent,
                     m->index, m->gi);
        snprintf(m->name, sizeof(m->name), "%s MIG %ug.%llugb", p->name, m->gi_slices,
                 (m->memory_bytes + (1ULL << 30) - 1) >> 30);
        m->domain = p->domain;
        m->bus = p->bus;
        m->dev = p->dev;
        m->minor = p->minor;
        m->numa = p->numa;
        m->events_supported = p->events_supported;
        format_bus_id(m);
        p->migs[p->mig_count++] = m;
        mig_total++;
        return 0;
    }
    if (strcmp(key, "nvlink") == 0 || strcmp(key, "topo") == 0) {
        char *a, *b, *c, *ignored;
        if (!next_pair(&cursor, &a, &ignored) || !next_pair(&cursor, &b, &ignored) ||
            !next_pair(&cursor, &c, &ignored)) {
            complain("config %s: wants `nvlink A B COUNT` or `topo A B LEVEL`", where);
            return NVML_ERROR_UNKNOWN;
        }
        unsigned int ia = (unsigned int)atoi(a), ib = (unsigned int)atoi(b);
        if (strcmp(key, "nvlink") == 0) {
            if (add_nvlinks(ia, ib, (unsigned int)atoi(c)) < 0) {
                complain("config %s: bad nvlink (GPUs must be listed above, at most 18 links each)", where);
                return NVML_ERROR_UNKNOWN;
            }
            return 0;
        }
        int level = topology_level(c);
        if (level < 0 || ia >= gpu_count || ib >= gpu_count) {
            complain("config %s: bad topo (GPUs listed above; SINGLE|MULTIPLE|HOSTBRIDGE|NODE|SYSTEM)", where);
            return NVML_ERROR_UNKNOWN;
        }
        topology[ia][ib] = topology[ib][ia] = level;
        return 0;
    }
    complain("config %s: unknown line", where);
    return NVML_ERROR_UNKNOWN;
}

static int load_state(void) {
    int init_error = 0;
    gpu_count = 0;
    mig_total = 0;
    memset(topology, 0xff, sizeof(topology));
    copy_str(driver_version, sizeof(driver_version), "535.261.03");
    nvml_version[0] = '\0';
    cuda_version = 12020;

    const char *config = getenv("FAKE_NVML_CONFIG");
    if (config && *config) {
        FILE *f = fopen(config, "r");
        if (!f) {
            complain("cannot read FAKE_NVML_CONFIG %s", config);
            return NVML_ERROR_UNKNOWN;
        }
        char line[1024];
        int lineno = 0;
        while (fgets(line, sizeof(line), f)) {
            lineno++;
            char *hash = strchr(line, '#');
            if (hash)
                *hash = '\0';
            int rc = parse_config_line(line, lineno, &init_error);
            if (rc) {
                fclose(f);
                return rc;
            }
        }
        fclose(f);
    } else {
        const char *count = getenv("FAKE_NVML_GPUS");
        gpu_count = count ? (unsigned int)atoi(count) : 1;
        if (gpu_count > MAX_GPUS)
            gpu_count = MAX_GPUS;
        for (unsigned int i = 0; i < gpu_count; i++)
            default_gpu(&gpus[i], i);
    }
    for (unsigned int i = 0; i < gpu_count; i++)
        format_bus_id(&gpus[i]);
    pthread_mutex_lock(&telemetry_lock);
    telemetry_loaded = 0; /* read the telemetry file afresh */
    pthread_mutex_unlock(&telemetry_lock);

    const char *version = getenv("FAKE_NVML_DRIVER_VERSION");
    if (version && *version)
        copy_str(driver_version, sizeof(driver_version), version);
    if (!nvml_version[0])
        snprintf(nvml_version, sizeof(nvml_version), "12.%s", driver_version);
    const char *forced = getenv("FAKE_NVML_INIT_ERROR");
    if (forced && *forced) {
        init_error = parse_error_code(forced);
        if (init_error < 0) {
            complain("FAKE_NVML_INIT_ERROR %s is not an NVML error name or number", forced);
            return NVML_ERROR_UNKNOWN;
        }
    }
    return init_error;
}

static long long now_ms_early(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- init, versions, errors ---- */

EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    pthread_mutex_lock(&state_lock);
    nvmlReturn_t rc = NVML_SUCCESS;
    if (init_refcount == 0)
        rc = load_state();
    if (rc == NVML_SUCCESS)
        init_refcount++;
    pthread_mutex_unlock(&state_lock);
    return rc;
}

EXPORT nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
EXPORT nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

EXPORT nvmlReturn_t nvmlShutdown(void) {
    pthread_mutex_lock(&state_lock);
    nvmlReturn_t rc = NVML_SUCCESS;
    if (init_refcount == 0)
        rc = NVML_ERROR_UNINITIALIZED;
    else
        init_refcount--;
    pthread_mutex_unlock(&state_lock);
    return rc;
}

EXPORT const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_ALREADY_INITIALIZED: return "Already Initialized";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_LIBRARY_NOT_FOUND: return "NVML Shared Library Not Found";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_CORRUPTED_INFOROM: return "Corrupted infoROM";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_RESET_REQUIRED: return "GPU requires restart";
    case NVML_ERROR_OPERATING_SYSTEM: return "The operating system has blocked the request.";
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH: return "RM has detected an NVML/RM version mismatch.";
    case NVML_ERROR_IN_USE: return "In use by another client";
    case NVML_ERROR_MEMORY: return "Insufficient Memory";
    case NVML_ERROR_NO_DATA: return "No data";
    default: return "Unknown Error";
    }
}

static int initialized(void) { return init_refcount > 0; }

static nvmlReturn_t put_string(char *buf, unsigned int length, const char *value) {
    if (!buf)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(value) + 1 > length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(buf, value, strlen(value) + 1);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (!initialized()) return NVML_ERROR_UNINITIALIZED;
    return put_string(version, length, driver_version);
}

EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    if (!initialized()) return NVML_ERROR_UNINITIALIZED;
    return put_string(version, length, nvml_version);
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version) {
    if (!version) return NVML_ERROR_INVALID_ARGUMENT;
    *version = cuda_version;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) { return nvmlSystemGetCudaDriverVersion(version); }

/* ---- devices ---- */

/* Validates a handle; a lost GPU (or a MIG device on one) answers GPU_IS_LOST. */
static nvmlReturn_t check(nvmlDevice_t d) {
    if (!initialized()) return NVML_ERROR_UNINITIALIZED;
    if (!d || d->magic != DEVICE_MAGIC) return NVML_ERROR_INVALID_ARGUMENT;
    if (d->lost || (d->parent && d->parent->lost)) return NVML_ERROR_GPU_IS_LOST;
    return NVML_SUCCESS;
}

#define CHECK(d) do { nvmlReturn_t rc_ = check(d); if (rc_) return rc_; } while (0)
#define CHECK_GPU(d) do { CHECK(d); if ((d)->is_mig) return NVML_ERROR_INVALID_ARGUMENT; } while (0)

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialized()) return NVML_ERROR_UNINITIALIZED;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = gpu_count;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { return nvmlDeviceGetCount_v2(count); }

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!initialized()) return NVML_ERROR_UNINITIALIZED;
    if (!device || index >= gpu_count) return NVML_ERROR_INVALID_ARGUMENT;
    if (gpus[index].lost) return NVML_ERROR_GPU_IS_LOST;
    *device = &gpus[index];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    if (!initialized()) return NVML_ERROR_UNINITIALIZED;
    if (!uuid || !device) return NVML_ERROR_INVALID_ARGUMENT;
    for (unsigned int i = 0; i < gpu_count; i++) {
        if (strcmp(gpus[i].uuid, uuid) == 0) {
            *device = &gpus[i];
            return gpus[i].lost ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS;
        }
        for (unsigned int j = 0; j < gpus[i].mig_count; j++)
            if (strcmp(gpus[i].migs[j]->uuid, uuid) == 0) {
                *device = gpus[i].migs[j];
                return gpus[i].lost ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS;
            }
    }
    return NVML_ERROR_NOT_FOUND;
}

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t d, unsigned int *index) {
    CHECK_GPU(d);
    if (!index) return NVML_ERROR_INVALID_ARGUMENT;
    *index = d->index;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *uuid, unsigned int length) {
    CHECK(d);
    return put_string(uuid, length, d->uuid);
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned int length) {
    CHECK(d);
    return put_string(name, length, d->name);
}

EXPORT nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t d, unsigned int *minor) {
    CHECK(d);
    if (!minor) return NVML_ERROR_INVALID_ARGUMENT;
    *minor = d->minor;
    return NVML_SUCCESS;
}

static void fill_pci(const struct fake_device *d, nvmlPciInfo_t *pci) {
    memset(pci, 0, sizeof(*pci));
    snprintf(pci->busIdLegacy, sizeof(pci->busIdLegacy), "%04X:%02X:%02X.0", d->domain, d->bus, d->dev);
    copy_str(pci->busId, sizeof(pci->busId), d->bus_id);
    pci->domain = d->domain;
    pci->bus = d->bus;
    pci->device = d->dev;
    pci->pciDeviceId = d->is_mig ? d->parent->pci_device_id : d->pci_device_id;
    pci->pciSubSystemId = d->is_mig ? d->parent->pci_subsystem_id : d->pci_subsystem_id;
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvmlPciInfo_t *pci) {
    CHECK(d);
    if (!pci) return NVML_ERROR_INVALID_ARGUMENT;
    fill_pci(d, pci);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t d, nvmlPciInfo_t *pci) { return nvmlDeviceGetPciInfo_v3(d, pci); }
EXPORT nvmlReturn_t nvmlDeviceGetPciInfo(nvmlDevice_t d, nvmlPciInfo_t *pci) { return nvmlDeviceGetPciInfo_v3(d, pci); }

static void telemetry_refresh(void);

/* Memory in use: the telemetry's fb_used_mib on a full GPU (at most its total); none on a MIG device. */
static unsigned long long used_bytes(const struct fake_device *d) {
    if (d->is_mig)
        return 0;
    telemetry_refresh();
    unsigned long long used = d->t->fb_used_mib << 20;
    return used > d->memory_bytes ? d->memory_bytes : used;
}

/* The telemetry file's `fail` error for a full GPU (memory is telemetry too), or 0. */
static nvmlReturn_t telemetry_failure(const struct fake_device *d) {
    if (d->is_mig)
        return NVML_SUCCESS;
    telemetry_refresh();
    return d->t->fail;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *memory) {
    CHECK(d);
    if (!memory) return NVML_ERROR_INVALID_ARGUMENT;
    if (telemetry_failure(d)) return telemetry_failure(d);
    memory->total = d->memory_bytes;
    memory->used = used_bytes(d);
    memory->free = d->memory_bytes - memory->used;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *memory) {
    CHECK(d);
    if (!memory) return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != (unsigned int)(sizeof(nvmlMemory_v2_t) | (2 << 24)))
        return 25; /* NVML_ERROR_ARGUMENT_VERSION_MISMATCH */
    if (telemetry_failure(d)) return telemetry_failure(d);
    memory->total = d->memory_bytes;
    memory->reserved = 0;
    memory->used = used_bytes(d);
    memory->free = d->memory_bytes - memory->used;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryAffinity(nvmlDevice_t d, unsigned int nodeSetSize, unsigned long *nodeSet,
                                               int scope) {
    CHECK(d);
    (void)scope;
    if (!nodeSet || nodeSetSize == 0) return NVML_ERROR_INVALID_ARGUMENT;
    memset(nodeSet, 0, nodeSetSize * sizeof(unsigned long));
    if (d->numa < 0)
        return NVML_ERROR_NOT_SUPPORTED;
    unsigned int word = (unsigned int)d->numa / (8 * sizeof(unsigned long));
    if (word >= nodeSetSize)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    nodeSet[word] = 1UL << ((unsigned int)d->numa % (8 * sizeof(unsigned long)));
    return NVML_SUCCESS;
}

/* ---- MIG ---- */

EXPORT nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t d, unsigned int *current, unsigned int *pending) {
    CHECK_GPU(d);
    if (!current || !pending) return NVML_ERROR_INVALID_ARGUMENT;
    if (d->mig_mode < 0) return NVML_ERROR_NOT_SUPPORTED;
    *current = *pending = (unsigned int)d->mig_mode;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t d, unsigned int *count) {
    CHECK_GPU(d);
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    if (d->mig_mode < 0) return NVML_ERROR_NOT_SUPPORTED;
    *count = d->mig_mode == 1 ? 7 : 0;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t d, unsigned int index, nvmlDevice_t *mig) {
    CHECK_GPU(d);
    if (!mig) return NVML_ERROR_INVALID_ARGUMENT;
    if (d->mig_mode != 1) return NVML_ERROR_INVALID_ARGUMENT;
    if (d->mig_error) return d->mig_error;
    if (index >= 7) return NVML_ERROR_INVALID_ARGUMENT;
    if (index >= d->mig_count) return NVML_ERROR_NOT_FOUND;
    *mig = d->migs[index];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t d, unsigned int *is_mig) {
    CHECK(d);
    if (!is_mig) return NVML_ERROR_INVALID_ARGUMENT;
    *is_mig = (unsigned int)d->is_mig;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t d, unsigned int *id) {
    CHECK(d);
    if (!id) return NVML_ERROR_INVALID_ARGUMENT;
    if (!d->is_mig) return NVML_ERROR_NOT_SUPPORTED;
    *id = d->gi;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t d, unsigned int *id) {
    CHECK(d);
    if (!id) return NVML_ERROR_INVALID_ARGUMENT;
    if (!d->is_mig) return NVML_ERROR_NOT_SUPPORTED;
    *id = d->ci;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t d, nvmlDevice_t *parent) {
    CHECK(d);
    if (!parent) return NVML_ERROR_INVALID_ARGUMENT;
    if (!d->is_mig) return NVML_ERROR_INVALID_ARGUMENT;
    *parent = d->parent;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetAttributes_v2(nvmlDevice_t d, nvmlDeviceAttributes_t *attributes) {
    CHECK(d);
    if (!attributes) return NVML_ERROR_INVALID_ARGUMENT;
    if (!d->is_mig) return NVML_ERROR_NOT_SUPPORTED; /* NVML answers this for MIG handles only */
    memset(attributes, 0, sizeof(*attributes));
    attributes->multiprocessorCount = d->sm_count ? d->sm_count : 14 * d->ci_slices;
    attributes->sharedCopyEngineCount = d->gi_slices;
    attributes->sharedDecoderCount = d->decoders;
    attributes->sharedEncoderCount = d->encoders;
    attributes->sharedJpegCount = d->jpegs;
    attributes->sharedOfaCount = d->ofas;
    attributes->gpuInstanceSliceCount = d->gi_slices;
    attributes->computeInstanceSliceCount = d->ci_slices;
    attributes->memorySizeMB = d->memory_bytes >> 20;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetAttributes(nvmlDevice_t d, nvmlDeviceAttributes_t *attributes) {
    return nvmlDeviceGetAttributes_v2(d, attributes);
}

/* ---- topology ---- */

EXPORT nvmlReturn_t nvmlDeviceGetTopologyCommonAncestor(nvmlDevice_t a, nvmlDevice_t b, int *level) {
    CHECK_GPU(a);
    CHECK_GPU(b);
    if (!level) return NVML_ERROR_INVALID_ARGUMENT;
    if (a == b) {
        *level = NVML_TOPOLOGY_INTERNAL;
        return NVML_SUCCESS;
    }
    int configured = topology[a->index][b->index];
    if (configured >= 0)
        *level = configured;
    else
        *level = (a->numa >= 0 && a->numa == b->numa) ? NVML_TOPOLOGY_NODE : NVML_TOPOLOGY_SYSTEM;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetNvLinkState(nvmlDevice_t d, unsigned int link, unsigned int *active) {
    CHECK_GPU(d);
    if (!active) return NVML_ERROR_INVALID_ARGUMENT;
    if (d->nvlink_count == 0) return NVML_ERROR_NOT_SUPPORTED;
    if (link >= NVML_NVLINK_LINKS) return NVML_ERROR_INVALID_ARGUMENT;
    *active = link < d->nvlink_count ? 1 : 0;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetNvLinkRemotePciInfo_v2(nvmlDevice_t d, unsigned int link, nvmlPciInfo_t *pci) {
    CHECK_GPU(d);
    if (!pci) return NVML_ERROR_INVALID_ARGUMENT;
    if (d->nvlink_count == 0) return NVML_ERROR_NOT_SUPPORTED;
    if (link >= NVML_NVLINK_LINKS) return NVML_ERROR_INVALID_ARGUMENT;
    if (link >= d->nvlink_count) return NVML_ERROR_NOT_FOUND;
    fill_pci(&gpus[d->nvlink_peer[link]], pci);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetNvLinkRemotePciInfo(nvmlDevice_t d, unsigned int link, nvmlPciInfo_t *pci) {
    return nvmlDeviceGetNvLinkRemotePciInfo_v2(d, link, pci);
}

/* ---- events ----
 * An event set remembers where the events file ended when it was created and delivers
 * every complete line appended after that, one per wait: `xid GPU XID [gi=N ci=N]`
 * (GPU: index or UUID) or `lost GPU` (the GPU is gone: its queries fail from now on
 * and the next wait answers GPU_IS_LOST). Waiting blocks on inotify, so an idle
 * plugin costs no CPU and an appended line is seen at once. */

#define QUEUE_SIZE 256

struct fake_event_set {
    unsigned long long registered[MAX_GPUS];
    char path[PATH_MAX];
    long offset;
    int inotify_fd;
    char partial[512];
    size_t partial_len;
    nvmlEventData_t queue[QUEUE_SIZE];
    int queue_error[QUEUE_SIZE];
    unsigned int head, tail;
};

static int find_gpu(const char *token) {
    if (isdigit((unsigned char)token[0]) && !strchr(token, '-')) {
        unsigned int i = (unsigned int)atoi(token);
        return i < gpu_count ? (int)i : -1;
    }
    for (unsigned int i = 0; i < gpu_count; i++)
        if (strcmp(gpus[i].uuid, token) == 0)
            return (int)i;
    return -1;
}

static void enqueue(struct fake_event_set *set, nvmlEventData_t event, int error) {
    if (set->tail - set->head >= QUEUE_SIZE)
        return; /* a real event queue overflows too; the oldest survive */
    set->queue[set->tail % QUEUE_SIZE] = event;
    set->queue_error[set->tail % QUEUE_SIZE] = error;
    set->tail++;
}

static void handle_event_line(struct fake_event_set *set, char *line) {
    char *cursor = line, *kind, *value;
    if (!next_pair(&cursor, &kind, &value))
        return;
    char *gpu_token;
    if (!next_pair(&cursor, &gpu_token, &value)) {
        complain("events: `%s` line names no GPU", kind);
        return;
    }
    int index = find_gpu(gpu_token);
    if (index < 0) {
        complain("events: no GPU %s", gpu_token);
        return;
    }
    nvmlEventData_t event;
    memset(&event, 0, sizeof(event));
    event.device = &gpus[index];
    event.gpuInstanceId = INVALID_INSTANCE;
    event.computeInstanceId = INVALID_INSTANCE;
    if (strcmp(kind, "lost") == 0) {
        gpus[index].lost = 1;
        enqueue(set, event, NVML_ERROR_GPU_IS_LOST);
        return;
    }
    if (strcmp(kind, "xid") != 0) {
        complain("events: unknown line kind %s", kind);
        return;
    }
    char *xid_text, *key;
    if (!next_pair(&cursor, &xid_text, &value)) {
        complain("events: xid line for %s has no XID number", gpu_token);
        return;
    }
    event.eventType = nvmlEventTypeXidCriticalError;
    event.eventData = strtoull(xid_text, NULL, 10);
    while (next_pair(&cursor, &key, &value)) {
        if (strcmp(key, "gi") == 0) event.gpuInstanceId = (unsigned int)atoi(value);
        else if (strcmp(key, "ci") == 0) event.computeInstanceId = (unsigned int)atoi(value);
    }
    if (set->registered[index] & nvmlEventTypeXidCriticalError)
        enqueue(set, event, NVML_SUCCESS);
}

static void read_new_lines(struct fake_event_set *set) {
    FILE *f = fopen(set->path, "r");
    if (!f)
        return;
    if (fseek(f, set->offset, SEEK_SET) == 0) {
        int c;
        while ((c = fgetc(f)) != EOF) {
            set->offset++;
            if (c == '\n') {
                set->partial[set->partial_len] = '\0';
                handle_event_line(set, set->partial);
                set->partial_len = 0;
            } else if (set->partial_len + 1 < sizeof(set->partial)) {
                set->partial[set->partial_len++] = (char)c;
            }
        }
    }
    fclose(f);
}

EXPORT nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *out) {
    if (!initialized()) return NVML_ERROR_UNINITIALIZED;
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    struct fake_event_set *set = calloc(1, sizeof(*set));
    if (!set) return NVML_ERROR_MEMORY;
    set->inotify_fd = -1;
    const char *path = getenv("FAKE_NVML_EVENTS");
    if (path && *path) {
        copy_str(set->path, sizeof(set->path), path);
        struct stat st;
        if (stat(path, &st) == 0) {
            set->offset = st.st_size;
        } else {
            FILE *f = fopen(path, "a"); /* make it, so that it can be watched */
            if (f) fclose(f);
        }
        set->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (set->inotify_fd >= 0 && inotify_add_watch(set->inotify_fd, path, IN_MODIFY | IN_CLOSE_WRITE) < 0) {
            close(set->inotify_fd);
            set->inotify_fd = -1;
        }
    }
    *out = set;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t d, unsigned long long *types) {
    CHECK_GPU(d);
    if (!types) return NVML_ERROR_INVALID_ARGUMENT;
    *types = d->events_supported ? SUPPORTED_EVENTS : 0;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t d, unsigned long long types, nvmlEventSet_t set) {
    CHECK_GPU(d);
    if (!set) return NVML_ERROR_INVALID_ARGUMENT;
    if (!d->events_supported) return NVML_ERROR_NOT_SUPPORTED;
    if (types & ~SUPPORTED_EVENTS) return NVML_ERROR_NOT_SUPPORTED;
    set->registered[d->index] |= types;
    return NVML_SUCCESS;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

EXPORT nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms) {
    if (!initialized()) return NVML_ERROR_UNINITIALIZED;
    if (!set || !data) return NVML_ERROR_INVALID_ARGUMENT;
    long long deadline = now_ms() + timeoutms;
    for (;;) {
        if (set->path[0])
            read_new_lines(set);
        if (set->head != set->tail) {
            unsigned int slot = set->head++ % QUEUE_SIZE;
            *data = set->queue[slot];
            return set->queue_error[slot];
        }
        long long left = deadline - now_ms();
        if (left <= 0)
            return NVML_ERROR_TIMEOUT;
        if (set->inotify_fd >= 0) {
            struct pollfd pfd = {.fd = set->inotify_fd, .events = POLLIN};
            if (poll(&pfd, 1, (int)(left > INT_MAX ? INT_MAX : left)) > 0) {
                char drain[4096];
                while (read(set->inotify_fd, drain, sizeof(drain)) > 0) {
                }
            }
        } else {
            struct timespec nap = {0, 5 * 1000 * 1000};
            nanosleep(&nap, NULL);
        }
    }
}

EXPORT nvmlReturn_t nvmlEventSetWait(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms) {
    return nvmlEventSetWait_v2(set, data, timeoutms);
}

EXPORT nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    if (!set) return NVML_ERROR_INVALID_ARGUMENT;
    if (set->inotify_fd >= 0)
        close(set->inotify_fd);
    free(set);
    return NVML_SUCCESS;
}

/* ---- telemetry ----
 * FAKE_NVML_TELEMETRY names a file of lines `GPU key=value ...` (GPU: index, UUID or `*`
 * for every GPU); the file is the whole state: values it does not name keep their
 * defaults. It is read again when its inode, size or mtime changed (write it by rename). */

static void telemetry_defaults(struct telemetry *t) {
    memset(t, 0, sizeof(*t));
    t->temp = 35;
    t->mem_temp = 40;
    t->power_mw = 60000;
    t->energy_mj = 1000000;
    t->sm_clock = 1410;
    t->mem_clock = 1215;
}

static int find_gpu(const char *token);

static void telemetry_set(struct telemetry *t, const char *key, const char *value) {
    unsigned long long v = strtoull(value, NULL, 10);
    if (strcmp(key, "util_gpu") == 0) t->util_gpu = (unsigned int)v;
    else if (strcmp(key, "util_mem") == 0) t->util_mem = (unsigned int)v;
    else if (strcmp(key, "util_enc") == 0) t->util_enc = (unsigned int)v;
    else if (strcmp(key, "util_dec") == 0) t->util_dec = (unsigned int)v;
    else if (strcmp(key, "temp") == 0) t->temp = (unsigned int)v;
    else if (strcmp(key, "mem_temp") == 0) t->mem_temp = (unsigned int)v;
    else if (strcmp(key, "power_mw") == 0) t->power_mw = (unsigned int)v;
    else if (strcmp(key, "energy_mj") == 0) t->energy_mj = v;
    else if (strcmp(key, "sm_clock") == 0) t->sm_clock = (unsigned int)v;
    else if (strcmp(key, "mem_clock") == 0) t->mem_clock = (unsigned int)v;
    else if (strcmp(key, "pcie_replay") == 0) t->pcie_replay = (unsigned int)v;
    else if (strcmp(key, "throttle") == 0) t->throttle = strtoull(value, NULL, 0);
    else if (strcmp(key, "fb_used_mib") == 0) t->fb_used_mib = v;
    else if (strcmp(key, "ecc_sbe_vol") == 0) t->ecc[0][0] = v;
    else if (strcmp(key, "ecc_sbe_agg") == 0) t->ecc[0][1] = v;
    else if (strcmp(key, "ecc_dbe_vol") == 0) t->ecc[1][0] = v;
    else if (strcmp(key, "ecc_dbe_agg") == 0) t->ecc[1][1] = v;
    else if (strcmp(key, "remap_corr") == 0) t->remap_corr = (unsigned int)v;
    else if (strcmp(key, "remap_unc") == 0) t->remap_unc = (unsigned int)v;
    else if (strcmp(key, "remap_pending") == 0) t->remap_pending = (unsigned int)v;
    else if (strcmp(key, "remap_failure") == 0) t->remap_failure = (unsigned int)v;
    else if (strcmp(key, "fail") == 0) t->fail = strcmp(value, "none") == 0 ? 0 : parse_error_code(value);
    else complain("telemetry: unknown key %s", key);
}

static void telemetry_refresh(void) {
    const char *path = getenv("FAKE_NVML_TELEMETRY");
    struct stat st;
    pthread_mutex_lock(&telemetry_lock);
    if (!path || !*path || stat(path, &st) != 0)
        memset(&st, 0, sizeof(st));
    if (telemetry_loaded && telemetry_seen.st_ino == st.st_ino && telemetry_seen.st_size == st.st_size &&
        telemetry_seen.st_mtim.tv_sec == st.st_mtim.tv_sec && telemetry_seen.st_mtim.tv_nsec == st.st_mtim.tv_nsec) {
        pthread_mutex_unlock(&telemetry_lock);
        return;
    }
    telemetry_seen = st;
    telemetry_loaded = 1;
    for (unsigned int i = 0; i < MAX_GPUS; i++)
        telemetry_defaults(&telemetry[i]);
    FILE *f = st.st_ino ? fopen(path, "r") : NULL;
    if (f) {
        char line[1024];
        while (fgets(line, sizeof(line), f)) {
            char *hash = strchr(line, '#');
            if (hash)
                *hash = '\0';
            char *cursor = line, *gpu, *key, *value;
            if (!next_pair(&cursor, &gpu, &value))
                continue;
            int all = strcmp(gpu, "*") == 0;
            int index = all ? -1 : find_gpu(gpu);
            if (!all && index < 0) {
                complain("telemetry: no GPU %s", gpu);
                continue;
            }
            while (next_pair(&cursor, &key, &value))
                for (unsigned int i = 0; i < gpu_count; i++)
                    if (all || (int)i == index)
                        telemetry_set(&telemetry[i], key, value);
        }
        fclose(f);
    }
    pthread_mutex_unlock(&telemetry_lock);
}

/* A GPU's telemetry, or the error its queries answer. MIG handles answer for their parent. */
static nvmlReturn_t telemetry_of(nvmlDevice_t d, struct telemetry **out) {
    CHECK(d);
    telemetry_refresh();
    struct fake_device *g = d->is_mig ? d->parent : d;
    if (g->t->fail)
        return g->t->fail;
    *out = g->t;
    return NVML_SUCCESS;
}

#define TELEMETRY(d, t) struct telemetry *t = NULL; do { nvmlReturn_t rc_ = telemetry_of(d, &t); if (rc_) return rc_; } while (0)

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *util) {
    if (!util) return NVML_ERROR_INVALID_ARGUMENT;
    TELEMETRY(d, t);
    util->gpu = t->util_gpu;
    util->memory = t->util_mem;
    return NVML_SUCCESS;
}

static nvmlReturn_t codec_util(nvmlDevice_t d, unsigned int *util, unsigned int *period, int decoder) {
    if (!util || !period) return NVML_ERROR_INVALID_ARGUMENT;
    TELEMETRY(d, t);
    *util = decoder ? t->util_dec : t->util_enc;
    *period = 167000;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetEncoderUtilization(nvmlDevice_t d, unsigned int *util, unsigned int *period) {
    return codec_util(d, util, period, 0);
}

EXPORT nvmlReturn_t nvmlDeviceGetDecoderUtilization(nvmlDevice_t d, unsigned int *util, unsigned int *period) {
    return codec_util(d, util, period, 1);
}

EXPORT nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t d, int sensor, unsigned int *temp) {
    if (!temp || sensor != 0) return NVML_ERROR_INVALID_ARGUMENT; /* NVML_TEMPERATURE_GPU only */
    TELEMETRY(d, t);
    *temp = t->temp;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t d, int count, nvmlFieldValue_t *values) {
    if (!values || count < 0) return NVML_ERROR_INVALID_ARGUMENT;
    TELEMETRY(d, t);
    for (int i = 0; i < count; i++) {
        values[i].timestamp = (long long)now_ms_early() * 1000;
        values[i].latencyUsec = 0;
        if (values[i].fieldId == NVML_FI_DEV_MEMORY_TEMP) {
            values[i].valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
            values[i].value.uiVal = t->mem_temp;
            values[i].nvmlReturn = NVML_SUCCESS;
        } else {
            values[i].nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
        }
    }
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t d, unsigned int *milliwatts) {
    if (!milliwatts) return NVML_ERROR_INVALID_ARGUMENT;
    TELEMETRY(d, t);
    *milliwatts = t->power_mw;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t d, unsigned long long *millijoules) {
    if (!millijoules) return NVML_ERROR_INVALID_ARGUMENT;
    TELEMETRY(d, t);
    *millijoules = t->energy_mj;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t d, int type, unsigned int *clock) {
    if (!clock) return NVML_ERROR_INVALID_ARGUMENT;
    TELEMETRY(d, t);
    if (type == 1) *clock = t->sm_clock;        /* NVML_CLOCK_SM */
    else if (type == 2) *clock = t->mem_clock;  /* NVML_CLOCK_MEM */
    else if (type == 0) *clock = t->sm_clock;   /* NVML_CLOCK_GRAPHICS */
    else return NVML_ERROR_INVALID_ARGUMENT;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetPcieReplayCounter(nvmlDevice_t d, unsigned int *value) {
    if (!value) return NVML_ERROR_INVALID_ARGUMENT;
    TELEMETRY(d, t);
    *value = t->pcie_replay;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t d, int errorType, int counterType,
                                                unsigned long long *count) {
    if (!count || errorType < 0 || errorType > 1 || counterType < 0 || counterType > 1)
        return NVML_ERROR_INVALID_ARGUMENT;
    TELEMETRY(d, t);
    *count = t->ecc[errorType][counterType];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t d, unsigned int *corr, unsigned int *unc,
                                              unsigned int *pending, unsigned int *failure) {
    if (!corr || !unc || !pending || !failure) return NVML_ERROR_INVALID_ARGUMENT;
    TELEMETRY(d, t);
    *corr = t->remap_corr;
    *unc = t->remap_unc;
    *pending = t->remap_pending;
    *failure = t->remap_failure;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t d, unsigned long long *reasons) {
    if (!reasons) return NVML_ERROR_INVALID_ARGUMENT;
    TELEMETRY(d, t);
    *reasons = t->throttle;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t d, int *major, int *minor) {
    CHECK(d);
    if (!major || !minor) return NVML_ERROR_INVALID_ARGUMENT;
    struct fake_device *g = d->is_mig ? d->parent : d;
    *major = g->cc_major;
    *minor = g->cc_minor;
    return NVML_SUCCESS;
}

/* ---- not NVML: lets the tests compare this library's struct sizes with pynvml's ---- */

EXPORT unsigned int fakeNvmlStructSize(const char *name) {
    if (strcmp(name, "nvmlPciInfo_t") == 0) return sizeof(nvmlPciInfo_t);
    if (strcmp(name, "nvmlMemory_t") == 0) return sizeof(nvmlMemory_t);
    if (strcmp(name, "nvmlMemory_v2_t") == 0) return sizeof(nvmlMemory_v2_t);
    if (strcmp(name, "nvmlDeviceAttributes_t") == 0) return sizeof(nvmlDeviceAttributes_t);
    if (strcmp(name, "nvmlEventData_t") == 0) return sizeof(nvmlEventData_t);
    if (strcmp(name, "nvmlUtilization_t") == 0) return sizeof(nvmlUtilization_t);
    if (strcmp(name, "nvmlFieldValue_t") == 0) return sizeof(nvmlFieldValue_t);
    return 0;
}
