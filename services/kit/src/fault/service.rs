//! `FaultService`: a server's fault rules at runtime. Every call is refused unless the server
//! was started with fault injection allowed. The rules live in memory: setting and clearing
//! are idempotent by nature, and an added rule takes its id from the request_id, so a retried
//! AddFaultRule replaces rather than duplicates.

use checkout_proto::fault::fault_service_server::{FaultService, FaultServiceServer};
use checkout_proto::fault::*;
use tonic::{Code, Request, Response, Status};

use super::{FaultControl, Rule};
use crate::status::Rejection;
use crate::validate::Violations;

/// Handlers of `FaultService` over one server's rules.
#[derive(Debug, Clone)]
pub struct FaultApi {
    control: FaultControl,
}

impl FaultApi {
    /// Handlers over these rules.
    pub fn new(control: FaultControl) -> Self {
        Self { control }
    }

    /// The generated server.
    pub fn server(self) -> FaultServiceServer<Self> {
        FaultServiceServer::new(self)
    }

    fn check_allowed(&self) -> Result<(), Status> {
        if self.control.allowed() {
            Ok(())
        } else {
            Err(Rejection::new(
                Code::FailedPrecondition,
                "FAULT_INJECTION_DISABLED",
                "this server was not started with fault injection allowed",
            )
            .into_status())
        }
    }
}

fn parse_rules(rules: &[FaultRule]) -> Result<Vec<Rule>, Status> {
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Rule::from_proto(r, &format!("rules[{i}]"))
                .map_err(|e| Rejection::invalid_field(e.field, e.problem).into_status())
        })
        .collect()
}

#[tonic::async_trait]
impl FaultService for FaultApi {
    async fn list_fault_rules(
        &self,
        _request: Request<ListFaultRulesRequest>,
    ) -> Result<Response<ListFaultRulesResponse>, Status> {
        self.check_allowed()?;
        let (rules, seed) = self.control.rules();
        Ok(Response::new(ListFaultRulesResponse {
            rules: rules.iter().map(Rule::to_proto).collect(),
            seed,
        }))
    }

    async fn set_fault_rules(
        &self,
        request: Request<SetFaultRulesRequest>,
    ) -> Result<Response<SetFaultRulesResponse>, Status> {
        self.check_allowed()?;
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id).check(
            req.rules.len() <= 100,
            "rules",
            "at most 100 rules",
        );
        v.finish()?;
        let rules = parse_rules(&req.rules)?;
        let rules = self.control.replace(rules, req.seed);
        Ok(Response::new(SetFaultRulesResponse {
            rules: rules.iter().map(Rule::to_proto).collect(),
        }))
    }

    async fn add_fault_rule(
        &self,
        request: Request<AddFaultRuleRequest>,
    ) -> Result<Response<AddFaultRuleResponse>, Status> {
        self.check_allowed()?;
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id)
            .check(req.rule.is_some(), "rule", "required");
        v.finish()?;
        let mut rule = Rule::from_proto(&req.rule.unwrap_or_default(), "rule")
            .map_err(|e| Rejection::invalid_field(e.field, e.problem).into_status())?;
        if rule.rule_id.is_empty() {
            rule.rule_id = req.request_id;
        }
        Ok(Response::new(AddFaultRuleResponse {
            rule: Some(self.control.add(rule).to_proto()),
        }))
    }

    async fn clear_fault_rules(
        &self,
        request: Request<ClearFaultRulesRequest>,
    ) -> Result<Response<ClearFaultRulesResponse>, Status> {
        self.check_allowed()?;
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id);
        v.finish()?;
        let cleared = self.control.clear();
        Ok(Response::new(ClearFaultRulesResponse {
            cleared: i32::try_from(cleared).unwrap_or(i32::MAX),
        }))
    }
}
