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

/* The sizes nvml.h gives these structs on LP64; pynvml's ctypes mirrors must agree
 * (tests/plugin checks pynvml's side against fakeNvmlStructSize). */
_Static_assert(sizeof(nvmlPciInfo_t) == 68, "nvmlPciInfo_t");
_Static_assert(sizeof(nvmlMemory_t) == 24, "nvmlMemory_t");
_Static_assert(sizeof(nvmlMemory_v2_t) == 40, "nvmlMemory_v2_t");
_Static_assert(sizeof(nvmlDeviceAttributes_t) == 40, "nvmlDeviceAttributes_t");
_Static_assert(sizeof(nvmlEventData_t) == 32, "nvmlEventData_t");

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
};

static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static int init_refcount;
static struct fake_device gpus[MAX_GPUS];
static struct fake_device migs[MAX_GPUS * MAX_MIGS];
static unsigned int gpu_count;
static unsigned int mig_total;
static int topology[MAX_GPUS][MAX_GPUS]; /* -1: derive from NUMA nodes */
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

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *memory) {
    CHECK(d);
    if (!memory) return NVML_ERROR_INVALID_ARGUMENT;
    memory->total = d->memory_bytes;
    memory->used = 0;
    memory->free = d->memory_bytes;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *memory) {
    CHECK(d);
    if (!memory) return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != (unsigned int)(sizeof(nvmlMemory_v2_t) | (2 << 24)))
        return 25; /* NVML_ERROR_ARGUMENT_VERSION_MISMATCH */
    memory->total = d->memory_bytes;
    memory->reserved = 0;
    memory->used = 0;
    memory->free = d->memory_bytes;
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

/* ---- not NVML: lets the tests compare this library's struct sizes with pynvml's ---- */

EXPORT unsigned int fakeNvmlStructSize(const char *name) {
    if (strcmp(name, "nvmlPciInfo_t") == 0) return sizeof(nvmlPciInfo_t);
    if (strcmp(name, "nvmlMemory_t") == 0) return sizeof(nvmlMemory_t);
    if (strcmp(name, "nvmlMemory_v2_t") == 0) return sizeof(nvmlMemory_v2_t);
    if (strcmp(name, "nvmlDeviceAttributes_t") == 0) return sizeof(nvmlDeviceAttributes_t);
    if (strcmp(name, "nvmlEventData_t") == 0) return sizeof(nvmlEventData_t);
    return 0;
}
